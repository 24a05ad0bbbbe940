"""Model FLOPs of a training step per policy, the machine's peak, and MFU = model FLOPs/s over that peak.

The FLOP count is llama_ft.model.flops (the training engine logs MFU with it; its docstring says what is
counted): `full` is 6 x P plus attention, a frozen block 2 x P, a LoRA-wrapped frozen block 4 x P plus 6 x
its adapters; attention over the whole T x T square as PaLM and nanoGPT count it, `causal` halves it.

Peaks: on CPU, bf16 and fp32 matmuls measured in the same run (torch.matmul, the run's threads; the fastest
repetition of the fastest shape among the library's probe shapes, flops.CPU_PEAK_SHAPES, and the squares n = 2048
and 4096, at the start and again at the end, the higher kept); on CUDA, the card's dense spec (H100/H200 SXM: 989
TFLOP/s bf16 and fp16, 67 fp32), with the measured matmul rate beside it.
"""
from __future__ import annotations

import math

import torch

from llama_ft.hf.loading import build_model
from llama_ft.model.config import LlamaConfig
from llama_ft.model.flops import CPU_PEAK_SHAPES, probe_peak, spec_peak, training_flops
from llama_ft.model.policies import apply_policy


def step_flops(cfg: LlamaConfig, policy: str, seq: int, task: str = "classification",
               causal: bool = False) -> dict:
    """Model FLOPs of one training step per token under `policy` at sequence length `seq`.

    Returns {"per_token", "forward_per_token", "matmul_params", "trainable_path_layers", "attention"}."""
    model = build_model(cfg, task, 2)  # meta device: no memory
    apply_policy(model, policy)
    f = training_flops(model, causal=causal)
    return {"per_token": f.at(seq),
            "forward_per_token": f.forward_per_token + f.forward_attention * seq + f.forward_per_sequence / seq,
            "matmul_params": f.matmul_params, "trainable_path_layers": f.trainable_path_layers,
            "attention": "causal" if causal else "full square"}


def peaks(device: torch.device, quick: bool, smoke: bool = False) -> dict:
    """{"measured": {dtype: FLOP/s}, "best_shape": {dtype: (m, k, n)}, "spec": ... or None, "mfu_peak": {dtype:
    FLOP/s MFU divides by}}. On CPU the measured peak is the best over the library's probe shapes and the squares
    2048^3 and (unless quick) 4096^3; `smoke`: 256^3 only, a check of the plumbing, since a 2048^3 bf16 matmul
    takes seconds on a CPU without bf16 dot products."""
    if device.type == "cuda":
        shapes, reps = ((8192, 8192, 8192),), 10
        kinds = (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32))
    else:
        squares = (256,) if smoke else (2048,) if quick else (2048, 4096)
        shapes, reps = (() if smoke else CPU_PEAK_SHAPES) + tuple((n, n, n) for n in squares), 5
        kinds = (("bf16", torch.bfloat16), ("fp32", torch.float32))
    best = {k: probe_peak(device, dt, shapes, reps) for k, dt in kinds}
    measured = {k: v[0] for k, v in best.items()}
    spec = spec_peak(device)
    return {"matmul_shapes": [list(sh) for sh in shapes], "best_shape": {k: list(v[1]) for k, v in best.items()},
            "measured": measured, "spec": spec, **_divisor(measured, spec)}


def merge_peaks(a: dict, b: dict) -> dict:
    """Two measurements of the same machine (start and end of a run): the higher of each measured peak."""
    measured = {k: max(a["measured"][k], b["measured"][k]) for k in a["measured"]}
    best_shape = {k: (a if a["measured"][k] >= b["measured"][k] else b)["best_shape"][k] for k in a["measured"]}
    return {**a, "measured": measured, "best_shape": best_shape, **_divisor(measured, a["spec"])}


def _divisor(measured: dict, spec: dict | None) -> dict:
    base = spec if spec is not None and not math.isnan(spec["bf16"]) else measured
    return {"mfu_peak": {k: base[k] for k in ("bf16", "fp16", "fp32") if k in base},
            "peak_source": "spec" if base is spec else "measured matmul"}

