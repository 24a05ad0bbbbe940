"""Scoring several versions of a model's trainable weights over one pass of its frozen bottom.

A recipe scores its test set twice: before training (the study's random-head row) and after. When the policy
freezes a deterministic bottom (`last:K`, `head`, LoRA on the top K blocks), both passes compute the same
bottom output: the weights below the first trainable block never change. Here that output is computed once
(a TrunkCache of the test set, as training caches its training set) and each version of the weights runs only
the trainable top from it. The versions are swapped into the model in turn, and the model ends with the weights
it came with.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from llama_ft.heap import release_free_memory
from llama_ft.train.batching import example_lengths
from llama_ft.train.checkpoint import load_trainable, trainable_state
from llama_ft.train.config import inference_amp
from llama_ft.train.loop import predict
from llama_ft.train.trunk import TrunkCache, can_cache, feature_dtype, find_split


VERSION_FIX = ("pass trainable_state(model) taken under the same policy (llama_ft.train.apply_training_policy), "
               "or None for the weights it holds.")


@dataclass
class VersionScores:
    """predict()'s output for each version, in the order given; `trunk_seconds`: the pass through the frozen
    bottom (0 when there was none to share); `seconds`: each version's own pass."""
    outputs: list = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    trunk_seconds: float = 0.0
    shared: bool = False


def shares_bottom(model: nn.Module) -> bool:
    """True when the model's policy (already applied) leaves a frozen deterministic bottom above the embeddings
    that versions of its trainable weights can share."""
    return can_cache(model, find_split(model))


def predict_versions(model: nn.Module, dataset: list[dict], versions: Sequence[Mapping[str, Tensor] | None],
                     batch_size: int = 64, amp: str = "auto", progress: str | None = None,
                     compile: bool | str = "auto") -> VersionScores:
    """predict(model, dataset) under each version of the trainable weights: None for the weights the model holds,
    or every trainable parameter's tensor by name (trainable_state() of the model before training). With more
    than one version and a policy that leaves a shared bottom (shares_bottom), the bottom runs once; otherwise
    each version is a whole predict pass. The model keeps its own weights afterwards, whatever happens."""
    held = trainable_state(model) if any(v is not None for v in versions) else None
    device = next(model.parameters()).device
    amp_dtype = inference_amp(amp, model, device)
    res = VersionScores(shared=len(versions) > 1 and shares_bottom(model))
    trunk = None
    try:
        if res.shared:
            t0 = time.perf_counter()
            trunk = TrunkCache(model, find_split(model), dataset, example_lengths(dataset), batch_size=batch_size,
                               device=device, amp_dtype=amp_dtype,
                               dtype=feature_dtype(amp_dtype),
                               ram_bytes=float("inf"), tmp_dir=None, show_progress=progress is not None,
                               compile=compile)
            res.trunk_seconds = time.perf_counter() - t0
        for i, version in enumerate(versions):
            t0 = time.perf_counter()
            if held is not None:
                load_trainable(model, held if version is None else version, f"versions[{i}]", fix=VERSION_FIX)
            res.outputs.append(predict(model, dataset, batch_size=batch_size, amp=amp, progress=progress,
                                       compile=compile, trunk=trunk))
            res.seconds.append(time.perf_counter() - t0)
    finally:
        if held is not None:
            load_trainable(model, held, "the model's own weights")
        if trunk is not None:
            trunk.close()
            if device.type == "cpu":
                release_free_memory()
    return res
