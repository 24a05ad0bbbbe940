"""Checkpoints that survive SIGKILL: a folder written aside, then swapped in with renames.

output_dir/checkpoint/ holds model.safetensors (trainable weights, HF names) and state.pt (optimizer,
scheduler, scaler, RNG states, data position, loss history). It is written to checkpoint.tmp/, the previous
one is renamed checkpoint.old/, the new one renamed into place, the old one removed: at every instant one
complete checkpoint exists (checkpoint/, or checkpoint.old/ between the two renames).
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    params = dict(model.named_parameters())
    wanted = {n for n, p in params.items() if p.requires_grad}
    if set(tensors) != wanted:
        raise ValueError(f"{where} holds {sorted(set(tensors) ^ wanted)[:5]}... that do not match the model's "
                         "trainable parameters; resume with the same policy, or delete the checkpoint.")
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_weights(directory: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """model.safetensors in `directory`, atomically (temp file + os.replace)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, directory / "model.safetensors")
    return directory / "model.safetensors"


def save_checkpoint(output_dir: str | Path, model: nn.Module, state: dict) -> Path:
    """Write output_dir/checkpoint atomically; returns its path."""
    out = Path(output_dir)
    tmp, final, old = out / "checkpoint.tmp", out / "checkpoint", out / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "model.safetensors"), metadata={"step": str(state["step"])})
    torch.save(state, tmp / "state.pt")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)  # its entries too, before the rename makes it the checkpoint
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(out)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(output_dir: str | Path | None) -> Path | None:
    """The complete checkpoint in output_dir (checkpoint/, else checkpoint.old/ left by a kill), or None."""
    if output_dir is None:
        return None
    for name in ("checkpoint", "checkpoint.old"):
        p = Path(output_dir) / name
        if (p / "state.pt").is_file() and (p / "model.safetensors").is_file():
            return p
    return None


def load_checkpoint(path: Path, model: nn.Module) -> dict:
    """Load the trainable weights into `model`; returns the state dict saved next to them."""
    load_trainable(model, load_file(str(path / "model.safetensors")), str(path / "model.safetensors"))
    # On CPU first: optimizer.load_state_dict moves each state to its parameter's device (under DDP every rank
    # would otherwise put rank 0's whole state on cuda:0), and a GPU checkpoint opens on a CPU-only machine.
    return torch.load(path / "state.pt", map_location="cpu", weights_only=False)
