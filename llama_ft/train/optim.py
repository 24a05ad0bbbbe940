"""AdamW over the trainable parameters (no decay on norms, biases, LoRA) and the warm-up + decay schedules."""
from __future__ import annotations

import math

import torch
from torch import nn


def decays(name: str, p: torch.Tensor) -> bool:
    """Weight decay on weight matrices only: not on norms and biases (1-D), nor on LoRA A/B, which B starts at
    zero and the rank already constrains (decay would pull the adapter back towards the frozen model)."""
    return p.ndim >= 2 and "lora_" not in name


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    device: torch.device) -> torch.optim.AdamW:
    """torch AdamW over requires_grad parameters, fused on CUDA and CPU (one pass per tensor), foreach elsewhere."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("no trainable parameters: the policy froze everything; use head, last:K, lora:R or full.")
    groups = [{"params": [p for n, p in named if decays(n, p)], "weight_decay": weight_decay},
              {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    # The fused kernel, on CPU too: one pass over every state instead of one per op (BENCHMARKS.md).
    fast = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, **fast)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warm-up, then linear or cosine
    decay to zero at `total` (the transformers formulas)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return max(0.0, 1.0 - progress)


def build_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float,
                    schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = math.ceil(warmup_ratio * total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, schedule))
