"""FSDP2 for TrainConfig.shard='fsdp': weights, gradients and AdamW moments sharded over the processes.

`shard` applies `torch.distributed.fsdp.fully_shard` to each decoder block, then to a `Root` around the engine's
TaskLoss, whose group holds the rest (embeddings, final norm, head). FSDP2 gathers a group's weights in its
module's forward hooks, and the engine calls parts of the model directly (the frozen bottom, the top, the head),
so every forward pass runs inside Root's forward: the loss, and through `Root(call=fn)` the trunk cache and the
evaluations. Frozen weights may be bf16 next to fp32 trainable ones in one group: FSDP2 only asks the trainable
ones to share a dtype, and gathers all of them in the autocast dtype (MixedPrecisionPolicy), reducing gradients
in fp32.

Checkpoints go through torch.distributed.checkpoint with torch's Hugging Face storage: every process writes its
shards to a safetensors file of checkpoint/sharded/, the shard offsets in the file's JSON header. DCP's default
storage writes a `.metadata` file that `dcp.load` reads with an unrestricted pickle; this storage writes none and
reads safetensors only, so resuming runs no code from the checkpoint, as with unsharded checkpoints.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# torch.distributed's fsdp, tensor and checkpoint packages are imported inside the functions that use them: they
# cost seconds of import time to every process that imports llama_ft (tests, predict, runs that do not shard).


class Root(nn.Module):
    """FSDP2's root: `Root(**batch)` is the wrapped module's output; `Root(call=fn)` runs fn() with the root
    group's weights gathered (the trunk cache, evaluation: passes that do not go through the loss)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, call=None, **kwargs):
        return call() if call is not None else self.inner(*args, **kwargs)


def check_fsdp(world: int, amp_dtype: torch.dtype | None, compile_mode: bool | str) -> None:
    """Refuse what shard='fsdp' cannot run, naming the setting and the fix."""
    if world < 2:
        raise ValueError("shard='fsdp' shards over processes, and this run has one; start it under torchrun with "
                         "--nproc_per_node 2 or more, or train with shard='none'.")
    if amp_dtype == torch.float16:
        raise ValueError("shard='fsdp' with amp='fp16' (a gradient scaler over sharded gradients) is not "
                         "supported; use amp='bf16', or shard='none'.")
    if compile_mode is True:
        raise ValueError("shard='fsdp' with compile=True is not supported (the engine compiles blocks mid-run, "
                         "after FSDP2 hooked them); use compile=False or 'auto' (eager under FSDP), or "
                         "shard='none'.")


def shard(task_module: nn.Module, blocks: list[nn.Module], param_dtype: torch.dtype | None) -> Root:
    """fully_shard each block, then a Root around `task_module` (in place); returns the Root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mp_policy=mp)
    root = Root(task_module)
    fully_shard(root, mp_policy=mp)
    return root


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every process calls it), else `t`."""
    return t.full_tensor() if _is_dtensor(t) else t


def _is_dtensor(t: torch.Tensor) -> bool:
    return hasattr(t, "device_mesh")


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(ignore_frozen_params=True, strict=False)


def save_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Every process writes its shards of the trainable weights and optimizer state to `directory`; returns the
    optimizer state's structure as JSON-ready data (its tensors named by their key in the files)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    msd, osd = get_state_dict(model, optimizer, options=_options())
    tensors = {f"model.{k}": v for k, v in msd.items()}
    state = {}
    for fqn, entries in osd["state"].items():
        state[fqn] = {}
        for k, v in entries.items():
            key = f"optimizer.{fqn}.{k}"
            tensors[key] = v
            state[fqn][k] = {"key": key, "dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape),
                             "sharded_like": fqn if _is_dtensor(v) else None}
    dcp.save(tensors, storage_writer=dcp.HuggingFaceStorageWriter(str(directory), save_distributed=True))
    return {"state": state, "param_groups": osd["param_groups"]}


def load_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, structure: dict,
                 device: torch.device) -> None:
    """The trainable weights and optimizer state that save_sharded wrote to `directory`, into model/optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    msd, _ = get_state_dict(model, optimizer, options=_options())
    tensors = {f"model.{k}": v for k, v in msd.items()}
    for entries in structure["state"].values():
        for e in entries.values():
            dtype = getattr(torch, e["dtype"])
            like = e["sharded_like"]
            tensors[e["key"]] = (torch.zeros_like(msd[like], dtype=dtype) if like is not None
                                 else torch.zeros(e["shape"], dtype=dtype, device=device))
    dcp.load(tensors, storage_reader=dcp.HuggingFaceStorageReader(str(directory)))
    osd = {"state": {fqn: {k: tensors[e["key"]] for k, e in entries.items()}
                     for fqn, entries in structure["state"].items()},
           "param_groups": structure["param_groups"]}
    set_state_dict(model, optimizer, model_state_dict={k: tensors[f"model.{k}"] for k in msd},
                   optim_state_dict=osd, options=_options())
