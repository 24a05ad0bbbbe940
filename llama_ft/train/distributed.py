"""torch.distributed set-up for runs started with torchrun: gloo on CPU, NCCL on CUDA; rank 0 writes."""
from __future__ import annotations

import os
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn

from llama_ft.train.fsdp import shard


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device): joins the process group torchrun describes (WORLD_SIZE > 1) if needed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise ValueError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s): start torchrun "
                                 "with --nproc_per_node at most the GPU count, or train with device='cpu' (gloo).")
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, device


def wrap(module: nn.Module, world: int, device: torch.device, shard_mode: str = "none",
         blocks: list[nn.Module] | None = None, param_dtype: torch.dtype | None = None) -> nn.Module:
    """DDP around `module` when there is more than one process (it averages gradients in backward); with
    shard_mode='fsdp', FSDP2 over `blocks` and a root around `module` (llama_ft.train.fsdp)."""
    if shard_mode == "fsdp":
        return shard(module, blocks or [], param_dtype)
    if world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync(module: nn.Module, skip: bool):
    """DDP's no_sync for the accumulation micro-batches before the last one (FSDP2: no reduce-scatter for them);
    a no-op otherwise."""
    if hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(not skip)
        return nullcontext()
    return module.no_sync() if skip and hasattr(module, "no_sync") else nullcontext()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
