"""The frozen trunk: where a policy's frozen bottom ends, running it without autograd, and caching its output.

A policy that freezes the embeddings and the first `start` decoder layers makes their output a fixed
function of the input ids. Training then runs that bottom under no_grad (no graph, no activations kept,
no backward through it) and the trainable top from its output via `start_layer` / `hidden_states`; with the
cache, the bottom runs once for the whole training set and each later epoch costs only the top.

Feature kinds (what the frozen trunk hands to the trainable top):
    ids     nothing is frozen below the first trainable weight (the embeddings train: `full`)
    hidden  the hidden state entering decoder layer `start` (`last:K`, `lora:R`, a trainable final norm)
    normed  the final-norm hidden states (`head` on QA: the top is qa_outputs alone)
    pooled  the final-norm vector of each example's last real token (`head` on classification)
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from llama_ft.files import left_by_dead_processes
from llama_ft.heap import keep_freed_pages
from llama_ft.train.batching import collate, padding_waste, sorted_batches
from llama_ft.train.compile import InferenceCompiler


@dataclass(frozen=True)
class TrunkSplit:
    kind: str    # ids | hidden | normed | pooled
    start: int   # first decoder layer of the trainable top (num_layers when none train)

    @property
    def has_frozen_bottom(self) -> bool:
        return self.kind != "ids"

    @property
    def per_token(self) -> bool:
        return self.kind in ("hidden", "normed")


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def find_split(model: nn.Module) -> TrunkSplit:
    """Where the frozen bottom of `model` (requires_grad already set by the policy) ends."""
    if model.task not in ("classification", "qa"):
        raise ValueError(f"train() handles classification and qa models; got task {model.task!r}.")
    bb = model.backbone
    n = len(bb.layers)
    if _trains(bb.embed_tokens):
        return TrunkSplit("ids", 0)
    start = next((i for i, layer in enumerate(bb.layers) if _trains(layer)), n)
    if start == n and not _trains(bb.norm):
        return TrunkSplit("pooled" if model.task == "classification" else "normed", n)
    return TrunkSplit("hidden", start)


def is_deterministic(model: nn.Module, split: TrunkSplit) -> bool:
    """True when the frozen bottom has no dropout, so its output can be stored once."""
    bb = model.backbone
    mods = [bb.embed_tokens, *bb.layers[:split.start]]
    return all(not (isinstance(m, nn.Dropout) and m.p > 0) for mod in mods for m in mod.modules())


def feature_dtype(amp_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype the trunk's features are kept in: bf16 under any autocast (its range holds fp16 runs' hidden
    states too), fp32 without one."""
    return torch.bfloat16 if amp_dtype is not None else torch.float32


def can_cache(model: nn.Module, split: TrunkSplit) -> bool:
    """True when the split leaves a frozen deterministic bottom above the embeddings whose output can be stored
    (for `hidden` features, one decoder layer at least: caching the embeddings alone saves nothing)."""
    return split.has_frozen_bottom and (split.start > 0 or not split.per_token) and is_deterministic(model, split)


def bottom_forward(model: nn.Module, split: TrunkSplit, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The frozen trunk's output (call it under no_grad or inference_mode)."""
    bb = model.backbone
    if split.kind == "hidden":
        return bb(input_ids, attention_mask, end_layer=split.start, final_norm=False)
    h = bb(input_ids, attention_mask)
    return model.pool(h, input_ids, attention_mask) if split.kind == "pooled" else h


def top_forward(model: nn.Module, split: TrunkSplit, input_ids: Tensor | None, attention_mask: Tensor,
                features: Tensor | None):
    """Task outputs (class logits, or (start, end) logits) from the trunk's features (or ids for `ids`)."""
    if split.kind == "ids":
        return model(input_ids, attention_mask)
    if split.kind == "hidden":
        return model(None, attention_mask, hidden_states=features, start_layer=split.start)
    if split.kind == "pooled":
        return model.score(features)
    return model.span_logits(features)


class TrunkCache:
    """The frozen trunk's output for every example: one row per example (pooled) or its real tokens only.

    Stored in `dtype` (bf16 under autocast) in RAM, or in a numpy memory map under `tmp_dir` when larger than
    `ram_bytes`; `batch(indices)` gives right-padded features (zeros at pads) on `device`. `compile`: the
    bottom's blocks compiled for the pass that fills it (InferenceCompiler: True, False or `auto`).
    """

    def __init__(self, model: nn.Module, split: TrunkSplit, dataset: list[dict], lengths: np.ndarray, *,
                 batch_size: int, device: torch.device, amp_dtype: torch.dtype | None, dtype: torch.dtype,
                 ram_bytes: float, tmp_dir: str | Path | None, show_progress: bool = False,
                 compile: bool | str = False):
        self.split, self.lengths, self.dtype = split, lengths, dtype
        hidden = model.config.hidden_size
        rows = len(dataset) if split.kind == "pooled" else int(lengths.sum())
        self.offsets = np.zeros(len(dataset) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        nbytes = rows * hidden * dtype.itemsize
        self.path = None
        if nbytes > ram_bytes and tmp_dir is not None:
            os.makedirs(tmp_dir, exist_ok=True)
            for stale in left_by_dead_processes(Path(tmp_dir), "trunk_cache_"):  # killed runs never close()
                stale.unlink(missing_ok=True)
            self.path = Path(tmp_dir) / f"trunk_cache_{os.getpid()}.bin"
            np_dtype = np.uint16 if dtype == torch.bfloat16 else np.dtype(str(dtype).removeprefix("torch."))
            self._mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=np_dtype, shape=(rows, hidden))
            self.store = torch.from_numpy(self._mm).view(dtype)
        else:
            self.store = torch.empty(rows, hidden, dtype=dtype)
        self.nbytes = nbytes
        pad = model.config.pad_token_id
        was_training = model.training
        model.eval()
        batches = sorted_batches(lengths, batch_size)
        if device.type == "cpu":
            keep_freed_pages()  # the pass may be a process's first (predict_versions): else each batch faults anew
        bar = tqdm(batches, desc="trunk cache", disable=not show_progress, leave=False)
        with InferenceCompiler(model, compile, padding_waste(lengths, batches)[1], bar=bar) as compiler:
            for idx in bar:
                t0 = time.perf_counter()
                b = collate([dataset[i] for i in idx], pad)
                ids, mask = b["input_ids"].to(device), b["attention_mask"].to(device)
                with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16,
                                                            enabled=amp_dtype is not None):
                    feats = bottom_forward(model, split, ids, mask).to(dtype).cpu()
                for row, i in enumerate(idx):
                    if split.kind == "pooled":
                        self.store[i].copy_(feats[row])
                    else:
                        self.store[self.offsets[i]:self.offsets[i + 1]].copy_(feats[row, :lengths[i]])
                compiler.after_batch(time.perf_counter() - t0, ids.numel())
        model.train(was_training)

    def check(self, model: nn.Module, lengths: np.ndarray) -> None:
        """Refuse to serve a closed cache, another dataset (`lengths`: the examples' lengths), or a model whose
        policy now splits elsewhere."""
        if self.store is None:
            raise ValueError("predict(trunk=...) got a closed TrunkCache; build it again for this pass.")
        if len(self.lengths) != len(lengths) or (self.lengths != lengths).any():
            raise ValueError(f"predict(trunk=...): the cache holds {len(self.lengths):,} examples of other lengths "
                             f"than the {len(lengths):,} given; build the TrunkCache from this dataset.")
        if (split := find_split(model)) != self.split:
            raise ValueError(f"predict(trunk=...): the cache holds the {self.split.kind} features entering layer "
                             f"{self.split.start}, but the model's policy now trains from {split.kind} / layer "
                             f"{split.start}; build the TrunkCache after applying the policy.")

    def batch(self, indices: np.ndarray, device: torch.device, length: int | None = None) -> Tensor:
        """The features of examples `indices`, right-padded with zeros to `length` (None: the longest's)."""
        if self.split.kind == "pooled":
            return self.store[torch.as_tensor(indices)].to(device, non_blocking=True)
        T = length or int(self.lengths[indices].max())
        out = torch.zeros(len(indices), T, self.store.shape[1], dtype=self.dtype)
        for row, i in enumerate(indices):
            out[row, :self.lengths[i]] = self.store[self.offsets[i]:self.offsets[i + 1]]
        return out.to(device, non_blocking=True)

    def close(self) -> None:
        """Drop the storage (and delete the memory-mapped file)."""
        self.store = None
        if self.path is not None:
            del self._mm
            self.path.unlink(missing_ok=True)


def flop_ratio(model: nn.Module, split: TrunkSplit) -> float:
    """Training-step FLOPs without the cache over FLOPs with it (forward of the bottom + 3x the top).

    Counts only the decoder-layer matmuls (the embedding is a lookup; heads are negligible)."""
    n = len(model.backbone.layers)
    top = n - split.start
    bottom = split.start
    return (bottom + 3 * top) / max(3 * top, 1e-9) if top else math.inf
