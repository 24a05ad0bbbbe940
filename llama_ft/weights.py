"""Safetensors checkpoints in Hugging Face layout: read (single file or sharded) into a meta-built model, write back."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .model import RotaryEmbedding

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# Tensors above this many elements are cast in row chunks, so a dtype change never holds two full copies.
_CHUNK_ELEMS = 1 << 24


class WeightsError(ValueError):
    """A checkpoint that does not fit the model; the message names the tensor, the shapes and the file."""


def checkpoint_files(folder: str | Path) -> dict[str, Path]:
    """Map every tensor name in a folder's safetensors checkpoint to the file that holds it."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        try:
            weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise WeightsError(f"{folder / INDEX}: not a safetensors index (needs a `weight_map` object): {e}")
        files = {name: folder / fname for name, fname in weight_map.items()}
        for f in set(files.values()):
            if not f.is_file():
                raise WeightsError(f"{folder / INDEX} lists shard {f.name}, which is missing from {folder}.")
        return files
    if (folder / SINGLE).is_file():
        return {name: folder / SINGLE for name in _keys(folder / SINGLE)}
    shards = sorted(folder.glob("*.safetensors"))
    if len(shards) == 1:
        return {name: shards[0] for name in _keys(shards[0])}
    raise WeightsError(
        f"{folder}: no weights found (expected {SINGLE}, or {INDEX} with its shards). "
        "Point llama_ft at a folder holding the model's safetensors files.")


def _keys(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{path}: unreadable safetensors file ({e}); it may be truncated or corrupt — "
                           "download or export it again.") from None


def read_tensors(files: dict[str, Path], names: list[str]) -> Iterator[tuple[str, "safe_open", Path]]:
    """Yield (name, open handle, file) for each requested name, opening each file once."""
    by_file: dict[Path, list[str]] = {}
    for n in names:
        by_file.setdefault(files[n], []).append(n)
    for path, ns in by_file.items():
        try:
            with safe_open(str(path), framework="pt") as f:
                for n in ns:
                    yield n, f, path
        except SafetensorError as e:
            raise WeightsError(f"{path}: unreadable safetensors file ({e}); it may be truncated or corrupt.") from None


def _load_cast(f, name: str, path: Path, shape: torch.Size, dtype: torch.dtype, device) -> torch.Tensor:
    try:
        sl = f.get_slice(name)
        numel = 1
        for s in shape:
            numel *= s
        if numel <= _CHUNK_ELEMS or len(shape) < 2:
            return f.get_tensor(name).to(device=device, dtype=dtype)
        out = torch.empty(shape, dtype=dtype, device=device)
        rows = max(1, _CHUNK_ELEMS // max(1, numel // shape[0]))
        for i in range(0, shape[0], rows):
            out[i:i + rows] = sl[i:i + rows].to(device=device, dtype=dtype)
        return out
    except SafetensorError as e:
        raise WeightsError(f"{path}: tensor {name!r} could not be read ({e}); the file may be truncated.") from None


def checkpoint_name(model: nn.Module, name: str, available: set[str]) -> str | None:
    """The checkpoint key holding our parameter `name` (backbone prefixes `model.`/`transformer.` interchange)."""
    if name in available:
        return name
    for ours, theirs in (("model.", "transformer."), ("transformer.", "model.")):
        if name.startswith(ours) and theirs + name[len(ours):] in available:
            return theirs + name[len(ours):]
    return None


def load_weights(model: nn.Module, folder: str | Path, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", strict: bool = True) -> list[str]:
    """Load a folder's safetensors weights into `model` (which may live on the meta device).

    Returns the names of head parameters that the checkpoint lacks (a base model loaded under a task head):
    those are initialised fresh. Any other missing, unexpected or mis-shaped tensor is an error when strict.
    """
    files = checkpoint_files(folder)
    available = set(files)
    tied = getattr(model.config, "tie_word_embeddings", False)
    head_prefixes = tuple(n + "." for n, m in model.named_children() if m in model.head_modules())
    expected = dict(model.state_dict(keep_vars=True))
    plan, missing_heads, missing = {}, [], []
    for name, param in expected.items():
        if tied and name == "lm_head.weight":
            continue
        key = checkpoint_name(model, name, available)
        if key is None:
            (missing_heads if name.startswith(head_prefixes) else missing).append(name)
        else:
            plan[name] = key
    used = set(plan.values())
    # A causal LM's lm_head is not an error under a task head: it is the part the task replaces.
    unexpected = sorted(k for k in available - used
                        if not (k == "lm_head.weight" and "lm_head.weight" not in expected)
                        and not k.endswith("rotary_emb.inv_freq"))
    where = Path(folder)
    if strict and missing:
        raise WeightsError(f"{where}: the checkpoint lacks {len(missing)} tensor(s) the model needs, e.g. "
                           f"{missing[:3]}. Is this the right model folder for this config?")
    if strict and unexpected:
        raise WeightsError(f"{where}: the checkpoint has {len(unexpected)} tensor(s) the model does not, e.g. "
                           f"{unexpected[:3]}. Check config.json (layer count, biases) against the weights.")
    state, ours_of = {}, {v: k for k, v in plan.items()}
    for name, f, path in read_tensors(files, list(plan.values())):
        ours = ours_of[name]
        want = expected[ours].shape
        got = torch.Size(f.get_slice(name).get_shape())
        if got != want:
            raise WeightsError(f"{path}: tensor {name!r} has shape {tuple(got)}, the model expects "
                               f"{tuple(want)}. config.json and the weights disagree.")
        state[ours] = _load_cast(f, name, path, want, dtype, device)
    model.load_state_dict(state, strict=False, assign=True)
    materialise(model, dtype, device)
    return missing_heads


def materialise(model: nn.Module, dtype: torch.dtype, device) -> None:
    """Give every parameter still on the meta device real memory and a fresh init; re-tie; rebuild rope."""
    for mod in model.modules():
        own = list(mod.parameters(recurse=False))
        if own and any(p.is_meta for p in own):
            mod.to_empty(device=device, recurse=False)
            model.init_module(mod)
            mod.to(dtype)
    for mod in model.modules():
        if isinstance(mod, RotaryEmbedding):
            mod.reset_parameters(device)
    model.tie_weights()


def state_dict_for_saving(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Our state dict as transformers names it, tied weights once, contiguous, in `dtype`."""
    sd = {}
    for k, v in model.state_dict().items():
        if getattr(model.config, "tie_word_embeddings", False) and k == "lm_head.weight":
            continue
        t = v.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        sd[k] = t.contiguous().cpu()
    return sd


def save_weights(state: dict[str, torch.Tensor], folder: str | Path, max_shard_bytes: int = 5 * 2**30) -> list[Path]:
    """Write `state` as model.safetensors, or as shards plus an index above `max_shard_bytes`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        path = folder / SINGLE
        _atomic_save(shards[0], path, meta)
        return [path]
    n = len(shards)
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        path = folder / f"model-{i:05d}-of-{n:05d}.safetensors"
        _atomic_save(shard, path, meta)
        paths.append(path)
        weight_map.update({k: path.name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    tmp = folder / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, folder / INDEX)
    return paths + [folder / INDEX]


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, meta: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
