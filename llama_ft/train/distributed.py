"""torch.distributed set-up for runs started with torchrun: gloo on CPU, NCCL on CUDA; rank 0 writes."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from llama_ft.train.fsdp import shard as fully_shard_model


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
        return fully_shard_model(module, blocks or [], param_dtype)
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


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process in the joined process group; (0, 1) when none is joined."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(items: Sequence, rank: int, world: int) -> Sequence:
    """Rank `rank`'s contiguous share of `items` (shares differ in size by one at most); the shares of ranks
    0 .. world - 1, joined in that order, are `items`."""
    n = len(items)
    return items[n * rank // world:n * (rank + 1) // world]


def gather_objects(obj: Any) -> list:
    """Every process's `obj` (picklable), in rank order; [obj] in a single process. A collective: every
    process of the group must call it."""
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def map_sharded(fn: Callable[[Sequence], Any], items: Sequence) -> Any:
    """fn(items), computed by all processes together: each runs fn on its shard of `items` and receives the
    others' results, joined in item order. fn returns one entry per item: a tensor, a numpy array, a list or a
    dict (joined with torch.cat, np.concatenate, + or |). A collective under torchrun: every process must call
    it with the same items; in a single process it is fn(items)."""
    rank, world = rank_and_world()
    if world == 1:
        return fn(items)
    parts = gather_objects(fn(shard(items, rank, world)))
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    if isinstance(parts[0], dict):
        return {k: v for p in parts for k, v in p.items()}
    return [x for p in parts for x in p]


def close_distributed() -> None:
    """Leave the process group, if one was joined (after the last collective of a run that went well)."""
    if dist.is_initialized():
        dist.destroy_process_group()
