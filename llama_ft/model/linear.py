"""Linear layers whose weight gradients read the tokens contiguously, for compiled bf16 training on a CPU with AMX.

A weight gradient is dW = dY^T X, a GEMM that sums over the tokens. As autograd writes it, its left operand dY^T is
a transposed view, so the sum runs along a strided dimension, and oneDNN's bf16 kernels take such a GEMM at about
half the speed of the same one with the summed dimension contiguous (BENCHMARKS.md, sessions 28 and 31). Here the
narrower of dY and X is laid out transposed first (the other then enters as it is, row-major), a copy that inductor
writes inside the kernel that produces the tensor or as a short pass of its own:

    N < K:  dW = (dY^T, contiguous) X            (k/v; down, LoRA's A)
    K < N:  dW = ((X^T, contiguous) dY)^T        (gate/up; LoRA's B, whose X is the r-wide one)
    N = K:  dW = dY^T X as autograd has it       (q/o: measured faster as a view)

Inside a compiled graph inductor would lay a transposed copy that only feeds a GEMM out as the view again, so the
GEMM is a custom op that asks for contiguous inputs. Other devices, eager code, fp32 and CPUs without AMX keep
autograd's own backward (not measured there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llama_ft.hardware import cpu_has_amx
from llama_ft.model.packed import packed_linear

# Off: every projection takes autograd's backward (benchmarks/weight_grad_layout.py compares the two in one run).
TOKEN_MAJOR = True

_CONTIGUOUS = getattr(torch.Tag, "needs_contiguous_strides", None)  # an older torch lacks the tag: the path stays off
# Read once here: a compiled block cannot trace the CPU's feature table.
AMX = cpu_has_amx()


@torch.library.custom_op("llama_ft::mm_contiguous", mutates_args=(),
                         tags=() if _CONTIGUOUS is None else (_CONTIGUOUS,))
def mm_contiguous(a: Tensor, b: Tensor) -> Tensor:
    """a @ b, with both operands laid out row-major first (inside a compiled graph inductor provides them so)."""
    return torch.mm(a.contiguous(), b.contiguous())


@mm_contiguous.register_fake
def _(a: Tensor, b: Tensor) -> Tensor:
    return a.new_empty(a.shape[0], b.shape[1])


def gemm_dtype(x: Tensor) -> torch.dtype:
    """The dtype a GEMM on x runs in here: autocast's on x's device, else x's own."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def use_token_major(x: Tensor, weight: Tensor) -> bool:
    """Whether a projection of x by `weight` takes this module's backward: a trained weight, in a compiled bf16
    training graph on a CPU with AMX."""
    return (TOKEN_MAJOR and _CONTIGUOUS is not None and torch.compiler.is_compiling() and weight.requires_grad
            and torch.is_grad_enabled() and x.device.type == "cpu" and gemm_dtype(x) == torch.bfloat16 and AMX)


def weight_grad(dy: Tensor, x: Tensor) -> Tensor:
    """dY^T X for dy [M, N] and x [M, K]: [N, K], with the summed M contiguous in the GEMM's left operand."""
    n, k = dy.shape[1], x.shape[1]
    if n < k:
        return mm_contiguous(dy.t(), x)
    if k < n:
        return mm_contiguous(x.t(), dy).t().contiguous()
    return dy.t().mm(x)


class _Linear(torch.autograd.Function):
    """x W^T + b, for x [M, K] (dtypes as the GEMM runs)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        dx = dy.mm(weight) if ctx.needs_input_grad[0] else None
        dw = weight_grad(dy, x) if ctx.needs_input_grad[1] else None
        db = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


class _AddUpProjection(torch.autograd.Function):
    """y + z B^T for y [M, N], z [M, r], B [N, r]: LoRA's up-projection added inside the GEMM."""

    @staticmethod
    def forward(ctx, y: Tensor, z: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(z, b)
        return torch.addmm(y, z, b.t())

    @staticmethod
    def backward(ctx, d: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        z, b = ctx.saved_tensors
        dz = d.mm(b) if ctx.needs_input_grad[1] else None
        db = weight_grad(d, z) if ctx.needs_input_grad[2] else None
        return d if ctx.needs_input_grad[0] else None, dz, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias); in a compiled bf16 CPU training graph with a trained weight, with the weight
    gradient laid out as above."""
    if not use_token_major(x, weight):
        return F.linear(x, weight, bias)
    dt = gemm_dtype(x)
    with torch.autocast("cpu", enabled=False):  # the casts above the Function, so autograd takes them back
        y = _Linear.apply(x.reshape(-1, x.shape[-1]).to(dt), weight.to(dt), None if bias is None else bias.to(dt))
    return y.view(*x.shape[:-1], weight.shape[0])


def add_up_projection(y: Tensor, z: Tensor, b: Tensor) -> Tensor:
    """y + z B^T for y [.., N], z [.., r] (a column slice of a wider tensor is read in place) and B [N, r]."""
    y2, z2 = y.flatten(0, -2), z.flatten(0, -2)
    if not use_token_major(z, b):
        return torch.addmm(y2, z2, b.t()).view(y.shape)
    dt = gemm_dtype(z)
    with torch.autocast("cpu", enabled=False):
        return _AddUpProjection.apply(y2.to(dt), z2.to(dt), b.to(dt)).view(y.shape)


class Linear(nn.Linear):
    """nn.Linear (the same parameters and state dict) whose forward is `linear` above, or, inside
    llama_ft.model.packed.packed_weights and without autograd, a product by its packed weight."""

    packed_weight: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.packed_weight is not None and not torch.is_grad_enabled():
            return packed_linear(x, self.packed_weight, self.bias)
        return linear(x, self.weight, self.bias)
