"""Model FLOPs of a training step per policy, the machine's peak, and MFU = model FLOPs/s over that peak.

How a step is counted (per token, matmuls only; a multiply-add is 2 FLOPs):
    forward            2 x P  for every weight matrix P the forward uses (decoder layers, the task head)
    input gradients    2 x P  for every weight matrix above the lowest trainable parameter (the backward
                              must pass through it, frozen or not)
    weight gradients   2 x P  for every trainable weight matrix
so `full` is the familiar 6 x P, a frozen block costs 2 x P, and a LoRA-wrapped frozen block 4 x P plus
6 x its adapters (the lowest trainable block is counted whole). Attention scores and values (no weights)
add 4 x T x d_attn per layer forward, tripled on the trainable path (PaLM appendix B: 12 x L x d_attn x T
for full training), counted over the whole T x T square as PaLM and nanoGPT do; `causal` halves it (what a
flash kernel computes). The embedding is a lookup and costs 0 (so P excludes it, also when it trains: its
gradient is a scatter). The classification head scores one pooled token per sequence. Norms, rotary,
softmax, activations and the optimizer cost 0 FLOPs here but take time: they are why MFU is below 100%.

Peaks: on CPU, a large bf16 and fp32 matmul measured in the same run (torch.matmul, the run's threads; the
fastest repetition of n = 2048 and 4096, at the start and again at the end, the higher kept); on CUDA, the
card's dense spec (H100/H200 SXM: 989 TFLOP/s bf16 and fp16, 67 fp32), with the measured matmul rate beside it.
"""
from __future__ import annotations

import math
import statistics
import time

import torch
from torch import nn

from llama_ft.hf.loading import build_model
from llama_ft.model.config import LlamaConfig
from llama_ft.model.lora import LoRALinear
from llama_ft.model.policies import apply_policy

# Dense (no sparsity) tensor-core peaks from NVIDIA's datasheets, TFLOP/s: (bf16/fp16, fp32 non-tensor).
SPEC_TFLOPS = {"H100 PCIe": (756.0, 51.0), "H100 NVL": (835.0, 60.0), "H100": (989.4, 66.9),
               "H200 NVL": (835.0, 60.0), "H200": (989.4, 66.9), "A100": (312.0, 19.5)}


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


def step_flops(cfg: LlamaConfig, policy: str, seq: int, task: str = "classification",
               causal: bool = False) -> dict:
    """Model FLOPs of one training step per token under `policy` at sequence length `seq`.

    Returns {"per_token", "forward_per_token", "matmul_params", "trainable_path_layers", "attention"}."""
    model = build_model(cfg, task, 2)  # meta device: no memory
    apply_policy(model, policy)
    layers = model.backbone.layers
    n = len(layers)
    first = next((i for i, layer in enumerate(layers) if _trains(layer)), n)
    d_attn = cfg.num_attention_heads * cfg.head_dim
    attn_fwd = 4 * seq * d_attn * (0.5 if causal else 1.0)
    total = fwd = 0.0
    params = 0
    for i, layer in enumerate(layers):
        on_path = i >= first
        for p, trains, lora in _matrices(layer):
            params += p
            total += 2 * p + (2 * p if on_path else 0) + (2 * p if trains else 0) + 6 * lora
            fwd += 2 * p + 2 * lora
        total += attn_fwd * (3 if on_path else 1)
        fwd += attn_fwd
    for head in model.head_modules():
        for p, trains, _ in _matrices(head):
            # Classification scores one pooled token per sequence; QA scores every token.
            share = 1.0 / seq if task == "classification" else 1.0
            total += share * (2 * p + (2 * p if first < n else 0) + (2 * p if trains else 0))
            fwd += share * 2 * p
    return {"per_token": total, "forward_per_token": fwd, "matmul_params": params,
            "trainable_path_layers": n - first, "attention": "causal" if causal else "full square"}


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


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int, reps: int = 5) -> float:
    """FLOP/s of an n x n x n matmul in `dtype` on random data, after two warm-ups: the fastest repetition on
    CPU (other jobs only ever slow it down), the median on CUDA (synchronised, timings are steady there)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)
    _time_matmul(a, b, 2)
    times = _time_matmul(a, b, reps)
    return 2 * n ** 3 / (statistics.median(times) if device.type == "cuda" else min(times))


def spec_peak(device: torch.device) -> dict | None:
    """The card's datasheet peaks in FLOP/s ({"bf16", "fp16", "fp32", "card"}), or None when unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (tensor, fp32) in SPEC_TFLOPS.items():
        if key in name:
            return {"card": name, "bf16": tensor * 1e12, "fp16": tensor * 1e12, "fp32": fp32 * 1e12}
    return {"card": name, "bf16": math.nan, "fp16": math.nan, "fp32": math.nan}


def peaks(device: torch.device, quick: bool) -> dict:
    """{"measured": {dtype: FLOP/s}, "spec": ... or None, "mfu_peak": {dtype: FLOP/s MFU divides by}}.
    On CPU the measured peak is the best over matmul sizes (2048 and, unless quick, 4096)."""
    if device.type == "cuda":
        sizes, reps = (8192,), 10
        kinds = (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32))
    else:
        sizes, reps = ((2048,) if quick else (2048, 4096)), 5
        kinds = (("bf16", torch.bfloat16), ("fp32", torch.float32))
    measured = {k: max(matmul_peak(dt, device, n, reps) for n in sizes) for k, dt in kinds}
    spec = spec_peak(device)
    return {"matmul_n": list(sizes), "measured": measured, "spec": spec, **_divisor(measured, spec)}


def merge_peaks(a: dict, b: dict) -> dict:
    """Two measurements of the same machine (start and end of a run): the higher of each measured peak."""
    measured = {k: max(a["measured"][k], b["measured"][k]) for k in a["measured"]}
    return {**a, "measured": measured, **_divisor(measured, a["spec"])}


def _divisor(measured: dict, spec: dict | None) -> dict:
    base = spec if spec is not None and not math.isnan(spec["bf16"]) else measured
    return {"mfu_peak": {k: base[k] for k in ("bf16", "fp16", "fp32") if k in base},
            "peak_source": "spec" if base is spec else "measured matmul"}


def amp_key(amp: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[amp]
