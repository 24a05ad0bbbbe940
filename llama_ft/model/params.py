"""Parameter counts of a model: total, trainable, frozen, by module group and by dtype."""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn


def _group(name: str) -> str:
    parts = name.split(".")
    if "embed_tokens" in parts:
        return "embeddings"
    if "layers" in parts:
        i = parts.index("layers")
        kind = parts[i + 2]
        kind = {"self_attn": "attention", "mlp": "mlp"}.get(kind, "norms")
        if any(p.startswith("lora_") for p in parts):
            kind = "lora"
        return f"layers.{parts[i + 1]}.{kind}"
    if parts[-2:] == ["norm", "weight"]:
        return "final_norm"
    return "head:" + parts[0]


def count_parameters(model: nn.Module, dtype: torch.dtype | None = None) -> dict:
    """{"total", "trainable", "frozen", "by_module", "bytes"}; a tied weight is counted once."""
    total = trainable = 0
    by_module: dict[str, int] = defaultdict(int)
    by_dtype: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():  # named_parameters() yields a shared (tied) tensor once
        n = p.numel()
        total += n
        trainable += n if p.requires_grad else 0
        by_module[_group(name)] += n
        dt = dtype or p.dtype
        by_dtype[str(dt).removeprefix("torch.")] += n * dt.itemsize
    return {"total": total, "trainable": trainable, "frozen": total - trainable,
            "by_module": dict(by_module), "bytes": dict(by_dtype)}
