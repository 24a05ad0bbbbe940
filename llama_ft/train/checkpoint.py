"""Checkpoints that survive SIGKILL and run no code when read: safetensors and JSON, written aside, swapped in.

output_dir/checkpoint/ holds model.safetensors (trainable weights, HF names), state.safetensors (every tensor of
the training state: optimizer moments and steps, RNG states as uint8) and state.json (everything else and the
structure the tensors fit into: param-group hyper-parameters, the scheduler's and scaler's state, the python
`random` state, step, loss history, the run's fingerprint). Under shard='fsdp' model.safetensors is replaced by
sharded/, each process's shards of the trainable weights and optimizer moments (llama_ft.train.fsdp), also
safetensors. Nothing on the load path unpickles: a checkpoint
from someone else cannot run code on `resume`. An older checkpoint (state.pt, a pickle) is refused unread.

It is written to checkpoint.tmp/, the previous one is renamed checkpoint.old/, the new one renamed into place,
the old one removed: at every instant one complete checkpoint exists (checkpoint/, or checkpoint.old/ between
the two renames).
"""
from __future__ import annotations

from collections.abc import Mapping

import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llama_ft.files import fsync_dir, write_atomic
from llama_ft.train.fsdp import full_tensor

FILES = ("model.safetensors", "state.safetensors", "state.json")
SHARDED = "sharded"  # the folder of shard files that replaces model.safetensors under shard='fsdp'
PICKLED = "state.pt"  # the format before this one


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed (old format, damaged, or written by other settings)."""


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights on CPU, whole (a sharded model's are gathered: every process must call it)."""
    return {n: full_tensor(p.detach()).to("cpu", copy=True).contiguous() for n, p in model.named_parameters()
            if p.requires_grad}


def load_trainable(model: nn.Module, tensors: Mapping[str, torch.Tensor], where: str,
                   fix: str = "resume with the same policy, or delete the checkpoint.") -> None:
    """Copy `tensors` into the model's trainable parameters, once they name exactly those parameters in their
    shapes; otherwise nothing is copied and the error names `where` and ends with `fix`."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if odd := sorted(set(tensors) ^ set(params)):
        raise ValueError(f"{where} names {odd[:3]}{'...' if len(odd) > 3 else ''}, not exactly the model's "
                         f"{len(params)} trainable parameters; {fix}")
    for n, t in tensors.items():
        if tuple(t.shape) != tuple(params[n].shape):
            raise ValueError(f"{where}[{n!r}] has shape {tuple(t.shape)}, the model's {tuple(params[n].shape)}; {fix}")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)


def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def to_json_and_tensors(obj, tensors: dict[str, torch.Tensor], path: str = "state"):
    """`obj` as JSON-ready data, its tensors moved into `tensors` (referenced by key). Tuples and dicts with
    non-string keys (the optimizer's parameter ids) are tagged so that they come back as they were."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: to_json_and_tensors(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"__items__": [[to_json_and_tensors(k, tensors, f"{path}.key{i}"),
                               to_json_and_tensors(v, tensors, f"{path}.{k}")] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [to_json_and_tensors(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [to_json_and_tensors(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{path} is a {type(obj).__name__}; a checkpoint stores tensors, numbers, strings, lists "
                    "and dicts only.")


def from_json_and_tensors(data, tensors: dict[str, torch.Tensor], where: str):
    """The inverse of to_json_and_tensors: builds only dicts, lists, tuples, scalars and tensors."""
    if isinstance(data, list):
        return [from_json_and_tensors(v, tensors, where) for v in data]
    if not isinstance(data, dict):
        return data
    if set(data) == {"__tensor__"}:
        if data["__tensor__"] not in tensors:
            raise CheckpointError(f"{where} names tensor {data['__tensor__']!r} that its state.safetensors lacks; "
                                  "the checkpoint is damaged: delete it to start afresh.")
        return tensors[data["__tensor__"]]
    if set(data) == {"__tuple__"}:
        return tuple(from_json_and_tensors(v, tensors, where) for v in data["__tuple__"])
    if set(data) == {"__items__"}:
        return {from_json_and_tensors(k, tensors, where): from_json_and_tensors(v, tensors, where)
                for k, v in data["__items__"]}
    return {k: from_json_and_tensors(v, tensors, where) for k, v in data.items()}


def write_weights(directory: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """model.safetensors in `directory`, atomically (llama_ft.files.write_atomic)."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    return write_atomic(directory / "model.safetensors", lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def save_checkpoint(output_dir: str | Path, model: nn.Module, state: dict) -> Path:
    """Write output_dir/checkpoint atomically; returns its path."""
    tmp = fresh_tmp(output_dir)
    save_file(trainable_state(model), str(tmp / "model.safetensors"), metadata={"step": str(state["step"])})
    return publish(output_dir, state)


def fresh_tmp(output_dir: str | Path) -> Path:
    """An empty output_dir/checkpoint.tmp for the next checkpoint's files."""
    tmp = Path(output_dir) / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(output_dir: str | Path, state: dict) -> Path:
    """Add `state` to the weights in checkpoint.tmp, sync it to disk and swap it in as output_dir/checkpoint."""
    out = Path(output_dir)
    tmp, final, old = out / "checkpoint.tmp", out / "checkpoint", out / "checkpoint.old"
    tensors: dict[str, torch.Tensor] = {}
    structure = to_json_and_tensors(state, tensors)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(structure))
    for d in (tmp, *(p for p in tmp.iterdir() if p.is_dir())):
        for f in d.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(d)  # its entries too, before the rename makes it the checkpoint
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(out)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(output_dir: str | Path | None) -> Path | None:
    """The complete checkpoint in output_dir (checkpoint/, else checkpoint.old/ left by a kill), or None.
    A checkpoint in the pickled format of earlier versions is refused with CheckpointError, never read."""
    if output_dir is None:
        return None
    for name in ("checkpoint", "checkpoint.old"):
        p = Path(output_dir) / name
        if (p / PICKLED).exists():
            raise CheckpointError(
                f"{p / PICKLED} is a checkpoint of an earlier llama_ft version, a pickle that could run code when "
                f"loaded, so it is not read. Start afresh: delete {p}, or train without TrainConfig.resume (the "
                "recipes: --overwrite instead of --resume).")
        if all((p / f).is_file() for f in FILES[1:]) and ((p / FILES[0]).is_file() or (p / SHARDED).is_dir()):
            return p
    return None


def read_state(path: Path) -> dict:
    """The training state saved in checkpoint `path` (tensors on CPU: optimizer.load_state_dict moves each to
    its parameter's device)."""
    try:
        structure = json.loads((path / "state.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / 'state.json'} is damaged ({e}); delete {path} to start afresh.") from None
    return from_json_and_tensors(structure, load_file(str(path / "state.safetensors")), str(path / "state.json"))


def load_weights(path: Path, model: nn.Module) -> None:
    """The trainable weights of checkpoint `path` into `model`."""
    load_trainable(model, load_file(str(path / "model.safetensors")), str(path / "model.safetensors"))
