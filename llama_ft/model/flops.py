"""Model FLOPs of a training step (what MFU divides by the peak) and the peak FLOP/s of a device.

How a step is counted (matmuls only; a multiply-add is 2 FLOPs):
    forward            2 x P  for every weight matrix P the forward runs (decoder layers, the task head)
    input gradients    2 x P  for every weight matrix above the lowest trainable parameter (the backward
                              must pass through it, frozen or not; the lowest trainable block is counted whole)
    weight gradients   2 x P  for every trainable weight matrix (a frozen matrix in a trainable block has none)
so `full` is the familiar 6 x P, a frozen block costs 2 x P, and a LoRA-wrapped frozen block 4 x P plus
6 x its adapters. Attention scores and values (no weights) add 4 x T x d_attn per token and layer forward,
tripled on the trainable path (PaLM appendix B: 12 x L x d_attn x T for full training), counted over the whole
T x T square as PaLM and nanoGPT do; `causal` halves it (what a flash kernel computes). The embedding is a
lookup and costs 0 (its gradient is a scatter). The classification head scores one pooled token per sequence.
Norms, rotary, softmax, activations and the optimizer cost 0 FLOPs here but take time: they are why MFU is
below 100%. Recomputation under gradient checkpointing is not model work and is not counted.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from llama_ft.model.lora import LoRALinear

# Dense (no sparsity) tensor-core peaks from NVIDIA's datasheets, TFLOP/s: (bf16/fp16, fp32 non-tensor).
SPEC_TFLOPS = {"H100 PCIe": (756.0, 51.0), "H100 NVL": (835.0, 60.0), "H100": (989.4, 66.9),
               "H200 NVL": (835.0, 60.0), "H200": (989.4, 66.9), "A100": (312.0, 19.5)}


@dataclass(frozen=True)
class StepFlops:
    """Training FLOPs of one sequence of length L: per_token * L + attention * L**2 + per_sequence."""
    per_token: float        # weight matmuls per token
    attention: float        # attention scores and values, per token per token of context
    per_sequence: float     # the classification head on the pooled token
    forward_per_token: float
    forward_per_sequence: float
    forward_attention: float
    matmul_params: int      # decoder-layer weight elements (P)
    trainable_path_layers: int

    def at(self, seq: int) -> float:
        """FLOPs per token for sequences of length `seq`."""
        return self.per_token + self.attention * seq + self.per_sequence / seq

    def of_lengths(self, lengths: np.ndarray) -> float:
        """FLOPs of training on sequences of these real lengths (padding is not model work)."""
        lengths = np.asarray(lengths, dtype=np.float64)
        return float(self.per_token * lengths.sum() + self.attention * (lengths ** 2).sum()
                     + self.per_sequence * len(lengths))


def _matrices(module: nn.Module) -> list[tuple[int, bool, int]]:
    """(weight elements, trains, adapter elements) of every Linear in `module`."""
    out = []
    for m in module.modules():
        if isinstance(m, nn.Linear):
            lora = m.lora_A.numel() + m.lora_B.numel() if isinstance(m, LoRALinear) else 0
            out.append((m.weight.numel(), m.weight.requires_grad, lora))
    return out


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def training_flops(model: nn.Module, causal: bool = False, cached_layers: int = 0) -> StepFlops:
    """FLOPs of a training step of `model` as its policy left it (requires_grad set), per the module docstring.

    cached_layers: decoder layers whose output comes from the trunk cache (they do not run at all); when all of
    them and the final norm are cached the step runs the head alone."""
    cfg = model.config
    layers = model.backbone.layers
    n = len(layers)
    first = next((i for i, layer in enumerate(layers) if _trains(layer)), n)
    attn = 4 * cfg.num_attention_heads * cfg.head_dim * (0.5 if causal else 1.0)
    per_token = fwd = attention = fwd_attention = 0.0
    params = 0
    for i, layer in enumerate(layers):
        on_path = i >= first
        for p, trains, lora in _matrices(layer):
            params += p
            if i < cached_layers:
                continue
            per_token += 2 * p + (2 * p if on_path else 0) + (2 * p if trains else 0) + 6 * lora
            fwd += 2 * p + 2 * lora
        if i >= cached_layers:
            attention += attn * (3 if on_path else 1)
            fwd_attention += attn
    per_sequence = fwd_sequence = 0.0
    for head in model.head_modules():
        for p, trains, _ in _matrices(head):
            cost = 2 * p + (2 * p if first < n else 0) + (2 * p if trains else 0)
            if model.task == "classification":
                per_sequence, fwd_sequence = per_sequence + cost, fwd_sequence + 2 * p
            else:
                per_token, fwd = per_token + cost, fwd + 2 * p
    return StepFlops(per_token=per_token, attention=attention, per_sequence=per_sequence, forward_per_token=fwd,
                     forward_per_sequence=fwd_sequence, forward_attention=fwd_attention, matmul_params=params,
                     trainable_path_layers=n - first)


def spec_peak(device: torch.device) -> dict | None:
    """The card's datasheet peaks in FLOP/s ({"bf16", "fp16", "fp32", "card"}), or None when unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (tensor, fp32) in SPEC_TFLOPS.items():
        if key in name:
            return {"card": name, "bf16": tensor * 1e12, "fp16": tensor * 1e12, "fp32": fp32 * 1e12}
    return {"card": name, "bf16": math.nan, "fp16": math.nan, "fp32": math.nan}


def _time_matmul(a: torch.Tensor, b: torch.Tensor, reps: int) -> list[float]:
    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync()
        times.append(time.perf_counter() - t0)
    return times


def matmul_peak(dtype: torch.dtype, device: torch.device, shape: int | tuple[int, int, int], reps: int = 5) -> float:
    """FLOP/s of an [m, k] x [k, n] matmul (`shape` (m, k, n), or n for n x n x n) in `dtype` on random data,
    after two warm-ups: the fastest repetition on CPU (other jobs only ever slow it down), the median on CUDA
    (synchronised, timings are steady there)."""
    m, k, n = (shape, shape, shape) if isinstance(shape, int) else shape
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(m, k, device=device, generator=g).to(dtype)
    b = torch.randn(k, n, device=device, generator=g).to(dtype)
    _time_matmul(a, b, 2)
    times = _time_matmul(a, b, reps)
    return 2 * m * k * n / (statistics.median(times) if device.type == "cuda" else min(times))


# The matmuls a peak probe takes the best of, (m, k, n). A CPU's matrix units run fastest on a tall product whose
# narrow operand stays in the core's cache, not on a large square one: on a Xeon with AMX, 1024^3 ran at well under
# half the rate of 8192 x 256 x 1024, and 2048^3 or 4096^3 below the decoder's own projections (BENCHMARKS.md,
# session 32), so a square probe made MFU read high. The square stays in the set for CPUs where it is the fastest.
# Each is a few GFLOP: the whole probe takes well under a second on a CPU.
CPU_PEAK_SHAPES = ((8192, 256, 1024), (4096, 512, 512), (1024, 1024, 1024))
CUDA_PEAK_SHAPES = ((4096, 4096, 4096),)


def probe_peak(device: torch.device, dtype: torch.dtype, shapes=None, reps: int = 3) -> tuple[float, tuple]:
    """(FLOP/s, shape): the fastest of `shapes` (default: CPU_PEAK_SHAPES or CUDA_PEAK_SHAPES) in `dtype`."""
    shapes = shapes or (CUDA_PEAK_SHAPES if device.type == "cuda" else CPU_PEAK_SHAPES)
    return max((matmul_peak(dtype, device, sh, reps), sh) for sh in shapes)


_PROBED: dict[tuple, float] = {}


def device_peak(device: torch.device, dtype: torch.dtype, again: bool = False) -> float:
    """Peak FLOP/s MFU divides by: the datasheet's for a known CUDA card, else a short matmul probe in `dtype`
    (the fastest of CPU_PEAK_SHAPES or CUDA_PEAK_SHAPES; well under a second), measured once per process, device,
    dtype and threads. again: probe once more and keep the fastest probe so far: a probe that ran beside something
    else (compile workers starting, another process) reads low, never high, and would inflate MFU."""
    spec = spec_peak(device)
    key = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    if spec is not None and not math.isnan(spec[key]):
        return spec[key]
    probe = (str(device), dtype, torch.get_num_threads())
    if again or probe not in _PROBED:
        measured, _ = probe_peak(device, dtype)
        _PROBED[probe] = max(measured, _PROBED.get(probe, 0.0))
    return _PROBED[probe]
