"""Self-attention for training on a CPU: SDPA's flash kernel forward, a backward of five batched GEMMs.

The CPU flash-attention backward of torch (bf16) takes several times its forward and was the largest cost of a
training step outside the matrix multiplies (BENCHMARKS.md, "Attention backward"). This backward recomputes the
attention probabilities from the forward's log-sum-exp and runs the rest as batched bf16 GEMMs with fp32
accumulation, which the matrix units (AMX) run fast, and a few elementwise passes, which inductor fuses when the
block is compiled:

    P = exp(S - lse) (causal),  dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),
    dQ = scale * dS K,  dK = scale * dS^T Q,

with S = scale * Q K^T. S and dP are taken in fp32 (a bf16 score loses the digits exp() needs); P and dS enter
their GEMMs as bf16, as in the flash kernel. With grouped-query attention the key/value gradients of the query
heads that share a key/value head are summed.
"""
from __future__ import annotations

import torch
from torch import Tensor

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

# Off: compiled blocks keep SDPA's flash backward too (benchmarks/attention.py compares the two).
GEMM_BACKWARD = True


def use_gemm_backward(q: Tensor, mask: Tensor | None) -> bool:
    """Whether a compiled LlamaAttention takes this path: a bf16 training forward on the CPU over more than one
    position, causal or with LlamaModel's boolean [B, 1, T, T] mask (inference, fp32 and other devices keep SDPA)."""
    return (GEMM_BACKWARD and q.device.type == "cpu" and q.shape[-2] > 1 and q.dtype == torch.bfloat16
            and (mask is None or (mask.dtype == torch.bool and mask.shape[-1] == q.shape[-2]))
            and torch.is_grad_enabled() and q.requires_grad)


class CausalAttention(torch.autograd.Function):
    """softmax(scale * q k^T + mask) v for q [B, H, T, D] and k, v [B, Hkv, T, D] (H a multiple of Hkv); `mask`
    boolean [B, 1, T, T] (True: attend), None for plain causal attention."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        rep = q.shape[1] // k.shape[1]
        ke, ve = (k, v) if rep == 1 else (k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1))
        if mask is None:
            out, lse = _flash(q, ke, ve, 0.0, True)
        else:  # the CPU flash kernel takes an additive mask of the query's dtype, not a boolean one
            bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
            out, lse = _flash(q, ke, ve, 0.0, False, attn_mask=bias)
        ctx.save_for_backward(q, k, v, out, lse, mask)
        return out

    @staticmethod
    def backward(ctx, d_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        q, k, v, out, lse, mask = ctx.saved_tensors
        B, H, T, D = q.shape
        hkv = k.shape[1]
        rep, scale = H // hkv, D ** -0.5
        ke, ve = (k, v) if rep == 1 else (k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1))
        d_out = d_out.contiguous()
        keep = torch.ones(T, T, dtype=torch.bool, device=q.device).tril() if mask is None else mask
        s = torch.matmul(q.float(), ke.float().transpose(-1, -2))
        p = torch.where(keep, torch.exp(s * scale - lse.unsqueeze(-1)), 0.0)
        dp = torch.matmul(d_out.float(), ve.float().transpose(-1, -2))
        rows = (d_out.float() * out.float()).sum(-1, keepdim=True)
        ds = (p * (dp - rows) * scale).to(q.dtype)
        dv = torch.matmul(p.to(q.dtype).transpose(-1, -2), d_out)
        dq = torch.matmul(ds, ke)
        dk = torch.matmul(ds.transpose(-1, -2), q)
        if rep > 1:
            dk = dk.view(B, hkv, rep, T, D).float().sum(2).to(k.dtype)
            dv = dv.view(B, hkv, rep, T, D).float().sum(2).to(v.dtype)
        return dq, dk, dv, None


def causal_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    return CausalAttention.apply(q, k, v, mask)
