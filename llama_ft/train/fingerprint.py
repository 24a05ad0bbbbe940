"""What a checkpoint must share with the run that resumes it: the settings that change the math, and the data.

A resumed run continues the same optimisation only when every setting that shapes a step (policy, lr, schedule,
batch geometry, precision, seed, ...) and the training examples are those of the run that wrote the
checkpoint; anything else would silently splice two different runs. Settings that only change how a run is
watched or where it writes are safe to change.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from llama_ft.train.config import TrainConfig

# TrainConfig fields a resumed run may change: they move no number of the optimisation.
SAFE_TO_CHANGE = frozenset({"progress", "log_every", "output_dir", "device", "compile", "cuda_graphs",
                            "compile_min_seconds", "eval_every", "checkpoint_every", "trunk_cache_ram_gib", "resume",
                            "peak_flops", "divergence_factor"})
TARGETS = ("label", "start_positions", "end_positions")
_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", None: "none"}


def data_fingerprint(train_set: list[dict]) -> dict:
    """{"examples": count, "sha256": hash of every example's input_ids and targets, in order}."""
    h = hashlib.sha256()
    for ex in train_set:
        ids = np.asarray(ex["input_ids"], dtype=np.int64)
        h.update(np.int64(len(ids)).tobytes())
        h.update(ids.tobytes())
        h.update(np.asarray([ex.get(k, -1) for k in TARGETS], dtype=np.int64).tobytes())
    return {"examples": len(train_set), "sha256": h.hexdigest()}


def run_fingerprint(cfg: TrainConfig, global_batch: int, amp_dtype: torch.dtype | None,
                    frozen_dtype: torch.dtype, train_set: list[dict]) -> dict:
    """The settings that change the math (as resolved for this run: global_batch, amp, frozen_dtype) and the
    data's fingerprint."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in SAFE_TO_CHANGE}
    settings.update(global_batch=global_batch, amp=_DTYPE_NAMES[amp_dtype].replace("fp32", "none"),
                    frozen_dtype=_DTYPE_NAMES[frozen_dtype])
    if settings["shard"] == "none":  # as checkpoints written before TrainConfig.shard existed say
        del settings["shard"]
    return {"settings": settings, "data": data_fingerprint(train_set)}


def check_same_run(saved: dict, now: dict, where) -> None:
    """Raise ValueError naming every setting that differs (old -> new) and a change of the data."""
    old, new = saved["settings"], now["settings"]
    changed = [f"{k}={old.get(k)!r} -> {k}={new.get(k)!r}" for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k)]
    problems = []
    if changed:
        problems.append("TrainConfig differs: " + ", ".join(changed))
    if saved["data"] != now["data"]:
        a, b = saved["data"], now["data"]
        problems.append(f"the training data differs: {a['examples']} examples (sha256 {a['sha256'][:12]}) -> "
                        f"{b['examples']} examples (sha256 {b['sha256'][:12]})")
    if problems:
        raise ValueError(f"{where} was written by another run: {'; '.join(problems)}. Resume with the "
                         "checkpoint's settings and data, or start afresh without TrainConfig.resume.")
