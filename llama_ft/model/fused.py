"""Projections that read the same input (q/k/v; gate/up) run as one matrix multiply.

The modules and their Hugging Face names stay as they are (`q_proj`, `k_proj`, `v_proj`, ...: state dicts,
exports, LoRA merges and PEFT adapters see nothing new); only the forward concatenates their weights, once per
call, and splits the output. One wide GEMM keeps the matrix units busier than three narrow ones (k/v are a third
of q's width under grouped-query attention), and the backward sums the input gradient inside one GEMM instead of
adding three full-width tensors. LoRA projections fuse too: their A matrices stack into one [k*r, in] down-
projection, and their B matrices form a block-diagonal up-projection added inside the same `addmm`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llama_ft.model.lora import LoRALinear

# Off: each projection runs on its own (benchmarks/fused_projections.py measures both).
FUSE = True


def _fusable(linears: Sequence[nn.Module]) -> str | None:
    """'plain', 'lora' or None (mixed kinds, mixed biases, adapters of different rank/scale or with dropout)."""
    kinds = {type(m) for m in linears}
    if len({m.bias is None for m in linears}) != 1 or len({m.in_features for m in linears}) != 1:
        return None
    if kinds == {nn.Linear}:
        return "plain"
    if kinds == {LoRALinear} and len({(m.rank, m.scaling) for m in linears}) == 1 \
            and all(isinstance(m.dropout, nn.Identity) for m in linears):
        return "lora"
    return None


def project(x: Tensor, linears: Sequence[nn.Module]) -> list[Tensor]:
    """[m(x) for m in linears], computed as one GEMM where they can be fused (see the module docstring)."""
    kind = _fusable(linears) if FUSE and len(linears) > 1 else None
    if kind is None:
        return [m(x) for m in linears]
    weight = torch.cat([m.weight for m in linears])
    bias = torch.cat([m.bias for m in linears]) if linears[0].bias is not None else None
    y = F.linear(x, weight, bias)
    if kind == "lora":
        z = F.linear(x, torch.cat([m.lora_A for m in linears])) * linears[0].scaling
        up = torch.block_diag(*[m.lora_B for m in linears])
        y = torch.addmm(y.flatten(0, -2), z.flatten(0, -2), up.t()).view(y.shape)
    return list(y.split([m.out_features for m in linears], dim=-1))
