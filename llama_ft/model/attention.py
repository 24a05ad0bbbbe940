"""Self-attention for training on a CPU: SDPA's flash kernel forward, a backward of batched GEMMs.

The CPU flash-attention backward of torch (bf16) takes several times its forward and was the largest cost of a
training step outside the matrix multiplies (BENCHMARKS.md, "Attention backward"). This backward recomputes the
attention probabilities from the forward's log-sum-exp and runs the rest as batched GEMMs, which the matrix units
(AMX) run fast, and a few elementwise passes, which inductor fuses when the block is compiled:

    P = exp(S - lse) (causal),  dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),
    dQ = scale * dS K,  dK = scale * dS^T Q,

with S = scale * Q K^T. S and dP are taken in fp32 (a bf16 score loses the digits exp() needs: 3-5x the flash
kernel's gradient error on sharp attention); P and dS enter their GEMMs as bf16, as in the flash kernel. The
query rows run in blocks, each against the keys up to its last row only, so the fp32 GEMMs and the elementwise
passes skip most of the masked upper triangle. With grouped-query attention the key/value gradients of the query
heads that share a key/value head are summed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

# Off: compiled blocks keep SDPA's flash backward too (benchmarks/attention_backward.py compares the two).
GEMM_BACKWARD = True

# Blocks of query rows the backward runs in (1: the whole square; benchmarks/attention_backward.py measures them).
QUERY_BLOCKS = 2


def use_gemm_backward(q: Tensor, mask: Tensor | None) -> bool:
    """Whether a compiled LlamaAttention takes this path: a bf16 training forward on the CPU over more than one
    position, causal or with LlamaModel's boolean [B, 1, T, T] mask (inference, fp32 and other devices keep SDPA)."""
    return (GEMM_BACKWARD and q.device.type == "cpu" and q.shape[-2] > 1 and q.dtype == torch.bfloat16
            and (mask is None or (mask.dtype == torch.bool and mask.shape[-1] == q.shape[-2]))
            and torch.is_grad_enabled() and q.requires_grad)


class CausalAttention(torch.autograd.Function):
    """softmax(scale * q k^T + mask) v for q [B, H, T, D] and k, v [B, Hkv, T, D] (H a multiple of Hkv); `mask`
    boolean [B, 1, T, T] (True: attend; causal, as LlamaModel builds it), None for plain causal attention."""

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
        ctx.blocks = QUERY_BLOCKS if q.shape[-2] >= QUERY_BLOCKS else 1  # read here, so a compiled block guards on it
        return out

    @staticmethod
    def backward(ctx, d_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        q, k, v, out, lse, mask = ctx.saved_tensors
        # The dtypes below are this function's own: a compiled block traces its backward under the forward's
        # autocast, which would otherwise take S and dP from bf16 GEMMs.
        with torch.autocast(q.device.type, enabled=False):
            return _backward(q, k, v, out, lse, mask, d_out.contiguous(), ctx.blocks) + (None,)


def _backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, mask: Tensor | None,
              d_out: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    B, H, T, D = q.shape
    hkv = k.shape[1]
    rep, scale = H // hkv, D ** -0.5
    ke, ve = (k, v) if rep == 1 else (k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1))
    keep = torch.ones(T, T, dtype=torch.bool, device=q.device).tril() if mask is None else mask
    rows = (d_out.float() * out.float()).sum(-1, keepdim=True)
    # K^T and V^T for the fp32 GEMMs, laid out [.., D, T]: a transposed view there runs at half the speed.
    k_t, v_t = (x.float().transpose(-1, -2).contiguous() for x in (ke, ve))
    dq, dk, dv = [], None, None
    # Query rows [a, b) attend to keys [0, b) only (LlamaModel's masks are causal too), so each block's GEMMs
    # and elementwise passes skip the keys after it.
    for i in range(n):
        a, b = T * i // n, T * (i + 1) // n
        qi, oi = q[:, :, a:b], d_out[:, :, a:b]
        s = torch.matmul(qi.float(), k_t[..., :b])
        p = torch.where(keep[..., a:b, :b], torch.exp(s * scale - lse[:, :, a:b].unsqueeze(-1)), 0.0)
        dp = torch.matmul(oi.float(), v_t[..., :b])
        ds = (p * (dp - rows[:, :, a:b]) * scale).to(q.dtype)
        dq.append(torch.matmul(ds, ke[:, :, :b]))
        # Summed over the query heads that share a key/value head, in fp32, and padded to all T keys.
        dv_i = torch.matmul(p.to(q.dtype).transpose(-1, -2), oi).view(B, hkv, rep, b, D).float().sum(2)
        dk_i = torch.matmul(ds.transpose(-1, -2), qi).view(B, hkv, rep, b, D).float().sum(2)
        if i < n - 1:
            dv_i, dk_i = F.pad(dv_i, (0, 0, 0, T - b)), F.pad(dk_i, (0, 0, 0, T - b))
        dk, dv = (dk_i, dv_i) if dk is None else (dk + dk_i, dv + dv_i)
    return torch.cat(dq, 2) if n > 1 else dq[0], dk.to(k.dtype), dv.to(v.dtype)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    return CausalAttention.apply(q, k, v, mask)
