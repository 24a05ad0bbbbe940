"""LoRA projections trained through a merged weight: one GEMM per projection forward, one backward.

A LoRA projection y = x W^T + s x A^T B^T, as written, runs the frozen GEMM, a down-projection to the r-wide
z = s x A^T, and an up-projection added into y; its backward runs the frozen input gradient, dz = s dY B, the
adapter's share of the input gradient dz A, the two adapter gradients, and adds. The rank-r GEMMs each read or
write a whole activation or gradient, and are bound by memory. Through the merged weight W' = W + s B A:

    forward:   y = x W'^T,  z = x (s A)^T                       (z only for B's gradient)
    backward:  dX = dY W',  dz = dY (s B),  dA = dz^T x,  dB = dY^T z

the same gradients (dX = dY W + s dY B A = dY W'). The forward's up-projection, which read and wrote y once more,
and the backward's dz A, which wrote a full-width gradient of x to be added to the frozen one, are gone; the
rank-r GEMMs left only read. W', s A and s B are buffers refreshed from the adapters after each optimizer step
(`lora.MergedTraining`), held in the GEMMs' dtype. W' rounds W + s B A to bf16, an error the frozen W, which is the
model, does not carry (its effect on outputs and F1 is measured in BENCHMARKS.md, session 34).
"""
from __future__ import annotations

import torch
from torch import Tensor

from llama_ft.model import linear
from llama_ft.model.linear import gemm_dtype


class _MergedProjections(torch.autograd.Function):
    """x W'_i^T for projections i = 1..n of one input x [M, K], given W'_i [N_i, K], s A_i [r_i, K] and s B_i
    [N_i, r_i]; the gradients go to x, A_i and B_i (passed for that, not read)."""

    @staticmethod
    def forward(ctx, x: Tensor, n: int, *tensors: Tensor) -> tuple[Tensor, ...]:
        merged, down, up = tensors[:n], tensors[n:2 * n], tensors[2 * n:3 * n]
        ys = tuple(x.mm(w.t()) for w in merged)
        # The projections' r-wide tensors from one GEMM: x is read once for all of them.
        z = x.mm(torch.cat(down).t()) if n > 1 else x.mm(down[0].t())
        ctx.save_for_backward(x, z, *merged, *up)
        ctx.ranks = [d.shape[0] for d in down]
        ctx.dtypes = [t.dtype for t in tensors[3 * n:]]
        return ys

    @staticmethod
    def backward(ctx, *d_ys: Tensor) -> tuple[Tensor | None, ...]:
        x, z, *weights = ctx.saved_tensors
        n = len(ctx.ranks)
        merged, up = weights[:n], weights[n:]
        # The adapters' gradients sum over the tokens: laid out token-major as linear.py does (TOKEN_MAJOR).
        weight_grad = linear.weight_grad if linear.TOKEN_MAJOR else _summed_over_tokens
        # dX = dY W': the adapters' share of x's gradient rides in the frozen GEMM, with no sum of its own.
        dx = sum(d.mm(w) for d, w in zip(d_ys, merged))
        dz = [d.mm(b) for d, b in zip(d_ys, up)]
        d_bs = [weight_grad(d, zi) for d, zi in zip(d_ys, z.split(ctx.ranks, 1))]
        d_as = weight_grad(torch.cat(dz, 1) if n > 1 else dz[0], x).split(ctx.ranks)
        grads = [g.to(dt) for g, dt in zip((*d_as, *d_bs), ctx.dtypes)]
        return (dx, None, *([None] * (3 * n)), *grads)


def _summed_over_tokens(dy: Tensor, x: Tensor) -> Tensor:
    """dY^T X as autograd writes it."""
    return dy.t().mm(x)


def merged_projections(x: Tensor, projections: tuple) -> tuple[Tensor, ...]:
    """Each LoRALinear of `projections` applied to x [.., K] through its merged buffers (`merged_weight`,
    `scaled_A`, `scaled_B`); their GEMMs run in the buffers' dtype."""
    dt = projections[0].merged_weight.dtype
    n = len(projections)
    with torch.autocast(x.device.type, enabled=False):  # the casts above the Function, so autograd takes them back
        ys = _MergedProjections.apply(
            x.reshape(-1, x.shape[-1]).to(dt), n, *(p.merged_weight for p in projections),
            *(p.scaled_A for p in projections), *(p.scaled_B for p in projections),
            *(p.lora_A for p in projections), *(p.lora_B for p in projections))
    return tuple(y.view(*x.shape[:-1], y.shape[-1]) for y in ys)


def runs_merged(x: Tensor, projection) -> bool:
    """Whether `projection` (a LoRALinear) takes the merged path on x: it holds merged buffers (only inside
    training, lora.MergedTraining) and x's GEMMs run in their dtype."""
    w = getattr(projection, "merged_weight", None)
    return w is not None and gemm_dtype(x) == w.dtype
