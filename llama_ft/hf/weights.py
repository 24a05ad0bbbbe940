"""Safetensors checkpoints in Hugging Face layout: read (single file or sharded) into a meta-built model, write back."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from llama_ft.dtypes import SAFETENSORS_DTYPES
from llama_ft.files import write_atomic, write_json
from llama_ft.model.llama import RotaryEmbedding
from llama_ft.sources.resolve import INDEX, SINGLE, SourceError, weight_files


class WeightsError(ValueError):
    """A checkpoint that does not fit the model; the message names the tensor, the shapes and the file."""


def checkpoint_files(folder: str | Path) -> dict[str, Path]:
    """Map every tensor name in a folder's safetensors checkpoint to the file that holds it."""
    folder = Path(folder)
    try:
        files, weight_map = weight_files(folder)
    except SourceError as e:
        raise WeightsError(f"{e} Point llama_ft at a folder holding the model's safetensors files.") from None
    if weight_map is not None:
        return {name: folder / fname for name, fname in weight_map.items()}
    return {name: files[0] for name in _keys(files[0])}


# Bytes read at a time when a tensor changes dtype on the way in: the only memory beyond the model's own.
_STAGING_BYTES = 64 << 20


def _check_entry(name: str, entry: object) -> None:
    """A header entry {dtype, shape, data_offsets} that describes a tensor; else a ValueError saying why."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise ValueError(f"tensor {name!r} has no dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"tensor {name!r} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d
                                              for d in shape):
        raise ValueError(f"tensor {name!r} has shape {shape!r}, not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end] with begin <= end")


class SafetensorsReader:
    """A safetensors file read with plain file reads (no mmap), so loading costs the model's bytes and no more.

    The format: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, data.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = open(self.path, "rb")  # noqa: SIM115 (closed by close() / __exit__)
        size = os.fstat(self.file.fileno()).st_size
        try:
            n = int.from_bytes(self.file.read(8), "little")
            if not 2 <= n <= size - 8:
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(self.file.read(n))
            if not isinstance(header, dict):
                raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
            header.pop("__metadata__", None)
            for name, entry in header.items():
                _check_entry(name, entry)
                end = entry["data_offsets"][1]
                if 8 + n + end > size:
                    raise ValueError(f"tensor {name!r} ends at byte {8 + n + end}, past the end of the file "
                                     f"({size} bytes)")
        except (ValueError, KeyError, TypeError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            self.file.close()
            raise WeightsError(f"{self.path}: unreadable safetensors file ({e}); it may be truncated or "
                               "corrupt — download or export it again.") from None
        self.header, self.data_start = header, 8 + n

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> torch.Size:
        return torch.Size(self.header[name]["shape"])

    def read(self, name: str, dtype: torch.dtype, device: str | torch.device = "cpu") -> torch.Tensor:
        """The tensor `name` in `dtype` on `device`; a cast goes through a small staging buffer."""
        entry = self.header[name]
        src = SAFETENSORS_DTYPES[entry["dtype"]]
        shape = self.shape(name)
        begin, end = entry["data_offsets"]
        if end - begin != shape.numel() * src.itemsize:
            raise WeightsError(f"{self.path}: tensor {name!r} holds {end - begin} bytes, its shape "
                               f"{tuple(shape)} needs {shape.numel() * src.itemsize}; the file is corrupt.")
        self.file.seek(self.data_start + begin)
        cpu_direct = src == dtype and torch.device(device).type == "cpu"
        out = torch.empty(shape, dtype=dtype, device=device)
        flat = out.view(-1)
        step = max(1, _STAGING_BYTES // src.itemsize)
        stage = None if cpu_direct else torch.empty(min(step, shape.numel()), dtype=src)
        for i in range(0, shape.numel(), step):
            k = min(step, shape.numel() - i)
            buf = flat[i:i + k] if cpu_direct else stage[:k]
            view = memoryview(buf.view(torch.uint8).numpy())
            if self.file.readinto(view) != len(view):
                raise WeightsError(f"{self.path}: tensor {name!r} is cut short; the file is truncated.")
            if not cpu_direct:
                flat[i:i + k] = buf.to(device=device, dtype=dtype)
        return out

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _keys(path: Path) -> list[str]:
    with SafetensorsReader(path) as f:
        return f.keys()


def read_tensors(files: dict[str, Path], names: list[str]) -> Iterator[tuple[str, SafetensorsReader, Path]]:
    """Yield (name, open reader, file) for each requested name, opening each file once."""
    by_file: dict[Path, list[str]] = {}
    for n in names:
        by_file.setdefault(files[n], []).append(n)
    for path, ns in by_file.items():
        with SafetensorsReader(path) as f:
            absent = [n for n in ns if n not in f.header]
            if absent:
                raise WeightsError(f"{path.parent / INDEX} places tensor(s) {absent[:3]} in {path.name}, which "
                                   "does not hold them; download or export the model again.")
            for n in ns:
                yield n, f, path


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
    for name in expected:
        if tied and name == "lm_head.weight":
            continue
        key = checkpoint_name(model, name, available)
        if key is None:
            # A task head new to a base checkpoint starts fresh; a causal LM's own lm_head is part of the model.
            fresh = name.startswith(head_prefixes) and not name.startswith("lm_head.")
            (missing_heads if fresh else missing).append(name)
        else:
            plan[name] = key
    used = set(plan.values())
    # A causal LM's lm_head is not an error under a task head (the part the task replaces), nor a stored copy
    # of the embedding in a checkpoint whose config ties them (transformers ties and ignores it too).
    unexpected = sorted(k for k in available - used
                        if not (k == "lm_head.weight" and ("lm_head.weight" not in expected or tied))
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
        got = f.shape(name)
        if got != want:
            raise WeightsError(f"{path}: tensor {name!r} has shape {tuple(got)}, the model expects "
                               f"{tuple(want)}. config.json and the weights disagree.")
        state[ours] = f.read(name, dtype, device)
    model.load_state_dict(state, strict=False, assign=True)
    materialise(model, dtype, device)
    return missing_heads


def materialise(model: nn.Module, dtype: torch.dtype, device) -> None:
    """Give every parameter still on the meta device real memory and a fresh init; re-tie; rebuild rope."""
    model.tie_weights()  # a tied head shares the embedding's (loaded) weight: no memory or init of its own
    for mod in model.modules():
        own = list(mod.parameters(recurse=False))
        if own and any(p.is_meta for p in own):
            mod.to_empty(device=device, recurse=False)
            model.init_module(mod)
            mod.to(dtype)
    model.tie_weights()
    for mod in model.modules():
        if isinstance(mod, RotaryEmbedding):
            mod.reset_parameters(device)


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
    write_json(folder / INDEX, index)
    return paths + [folder / INDEX]


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, meta: dict) -> None:
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
