"""A LoRA projection over a frozen weight as one operator: x W^T + b, with the adapter's up-projection z B^T added
into that output in place, and a backward that computes only what a frozen weight needs.

`torch.addmm(y, z, B^T)` first copies y, the projection's whole output, into a new tensor and then adds the
up-projection there; torch.compile lowers it the same way. That copy is a full-width pass per adapted projection,
forward, bound by memory, and on a CPU with AMX it cost more than the rank-r GEMM it serves (BENCHMARKS.md,
session 30). Inside one operator the frozen GEMM's output is fresh, so the up-projection accumulates into it with
`addmm_`. The operator is opaque to torch.compile (torch.library.custom_op), which therefore cannot lay the copy
back in; its backward is one too, for the same reason: B's gradient B^T's = z^T dY reads z^T as a contiguous
r x tokens matrix, which the GEMM streams at about twice the speed of the transposed view autograd hands it
(torch 2.13, oneDNN).

Not annotated with `from __future__ import annotations`: torch.library reads the types to build the schema.
"""
from typing import Optional

import torch
from torch import Tensor


@torch.library.custom_op("llama_ft::frozen_linear_with_adapter", mutates_args=())
def frozen_linear_with_adapter(x: Tensor, weight: Tensor, bias: Optional[Tensor], z: Tensor, lora_B: Tensor) -> Tensor:
    """x W^T + b + z B^T for 2-D x [N, in] and z [N, r] (z: the adapter's scaled down-projection x A^T s, a
    view of a stacked one read in place). `weight` and `bias` get no gradient."""
    y = torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())
    return y.addmm_(z, lora_B.t())


@frozen_linear_with_adapter.register_fake
def _(x, weight, bias, z, lora_B):
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.custom_op("llama_ft::frozen_linear_with_adapter_backward", mutates_args=())
def frozen_linear_with_adapter_backward(grad: Tensor, weight: Tensor, z: Tensor, lora_B: Tensor,
                                        input_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dL/dx, or an empty tensor without `input_grad`; dL/dz; dL/dB) from dL/dy [N, out]."""
    dx = torch.mm(grad, weight) if input_grad else grad.new_empty(0)
    dz = torch.mm(grad, lora_B)
    d_b = torch.mm(z.t().contiguous(), grad).t().contiguous()
    return dx, dz, d_b


@frozen_linear_with_adapter_backward.register_fake
def _(grad, weight, z, lora_B, input_grad):
    dx = grad.new_empty(grad.shape[0], weight.shape[1]) if input_grad else grad.new_empty(0)
    return dx, grad.new_empty(grad.shape[0], lora_B.shape[1]), grad.new_empty(lora_B.shape)


def _setup_context(ctx, inputs, output):
    x, weight, _, z, lora_B = inputs
    ctx.save_for_backward(weight, z, lora_B)


def _backward(ctx, grad):
    weight, z, lora_B = ctx.saved_tensors
    input_grad = ctx.needs_input_grad[0]
    dx, dz, d_b = frozen_linear_with_adapter_backward(grad, weight, z, lora_B, input_grad)
    return (dx if input_grad else None), None, None, dz, d_b


frozen_linear_with_adapter.register_autograd(_backward, setup_context=_setup_context)


def adapted_linear(x: Tensor, weight: Tensor, bias: Tensor | None, z: Tensor, lora_B: Tensor) -> Tensor:
    """x W^T + b + z B^T for x [..., in] and z [..., r], through frozen_linear_with_adapter, in the autocast dtype
    where autocast is on (as F.linear would compute; an operator of our own gets no autocast of its own)."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        x, weight, z, lora_B = x.to(dt), weight.to(dt), z.to(dt), lora_B.to(dt)
        bias = bias.to(dt) if bias is not None else None
    y = frozen_linear_with_adapter(x.reshape(-1, x.shape[-1]), weight, bias, z.reshape(-1, z.shape[-1]), lora_B)
    return y.view(*x.shape[:-1], weight.shape[0])
