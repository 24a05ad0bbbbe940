"""Linear weights laid out ahead of time for oneDNN's bf16 matrix multiplies, while a model generates on a CPU with
AMX.

`F.linear` on a bf16 CPU tensor hands oneDNN the weight in PyTorch's row-major layout, and oneDNN reorders it into
the blocked layout its AMX kernels read, on every call. A decoding step multiplies a few dozen rows by every
weight of the model: the reorder then costs about as much as the product, and the step reads each weight twice.
`packed_weights` reorders each bf16 weight once, before generation, and `Linear` multiplies by that copy while it
exists: the same kernels, whose products matched F.linear's bit for bit alone, though a few greedy replies of the
zero-shot row change with their rounding (BENCHMARKS.md, session 37; benchmarks/generation.py compares). The copies
live only inside the context, beside the weights, which stay as they are: state dicts, training and exports never
see them. They hold as much memory as the bf16 weights while they exist.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from llama_ft.hardware import cpu_has_amx

# Off: generation multiplies by the weights as they are (benchmarks/generation.py's `recipe-unpacked` row).
PACKED = True
# The batch rows oneDNN lays the weights out for: a decoding batch (zero_shot.DECODE_ROWS). Products of any number
# of rows take it; a layout for 1 row was no faster and rounded differently (BENCHMARKS.md, session 37).
PACK_ROWS = 64

# Read once, as linear.py does: generation asks for every weight, and under a torch without the feature table each
# question would read /proc/cpuinfo again.
AMX = cpu_has_amx()

_reorder = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
_packed_linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def packs(weight: Tensor) -> bool:
    """Whether packed_weights lays out this weight: bf16, on a CPU with AMX, with oneDNN's ops in this torch."""
    return (PACKED and weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and _reorder is not None
            and _packed_linear is not None and torch.backends.mkldnn.is_available() and AMX)


@contextmanager
def packed_weights(model: nn.Module) -> Iterator[int]:
    """Inside: every module of `model` with a `packed_weight` slot (llama_ft.model.linear.Linear) whose weight `packs`
    multiplies by a packed copy of it in inference (no autograd). Yields how many it packed. A nested context
    packs nothing more; each removes only the copies it made."""
    mine = [m for m in model.modules()
            if getattr(m, "packed_weight", False) is None and isinstance(m, nn.Linear) and packs(m.weight)]
    for m in mine:
        m.packed_weight = _reorder(m.weight.detach(), PACK_ROWS)
    try:
        yield len(mine)
    finally:
        for m in mine:
            del m.packed_weight   # back to the class's None: the module is as it was


def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """x W^T + b with W laid out by packed_weights; x is cast to bf16 (autocast would)."""
    return _packed_linear(x.to(torch.bfloat16), packed, None if bias is None else bias.to(torch.bfloat16),
                          "none", [None], "")
