"""Low-rank adapters (LoRA) on nn.Linear, keeping the Hugging Face parameter names of the wrapped layer."""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as nn_module

from llama_ft.hardware import cpu_has_amx
from llama_ft.model.linear import Linear, add_up_projection, linear
from llama_ft.model.merged_lora import merged_projections, runs_merged

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Linear):
    """y = x W^T + b + (alpha / r) * x A^T B^T, with W frozen and A, B trained; B starts at zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.scaling = rank, alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()  # PEFT adapters may carry lora_dropout
        # Adapters are trained, so they keep fp32 master weights even when the frozen base is bf16.
        dev, dt = base.weight.device, torch.float32
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=dev, dtype=dt))
        if not self.lora_A.is_meta:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        # W + s B A, s A and s B while MergedTraining holds them (llama_ft.model.merged_lora); not saved.
        self.register_buffer("merged_weight", None, persistent=False)
        self.register_buffer("scaled_A", None, persistent=False)
        self.register_buffer("scaled_B", None, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if runs_merged(x, self):
            return merged_projections(x, (self,))[0]
        y = F.linear(x, self.weight, self.bias)  # frozen: no weight gradient to lay out
        # The detour stays r wide until its last GEMM: the scale multiplies the [.., r] tensor, and addmm adds
        # the up-projection into y inside the GEMM, so no full-width elementwise pass is spent (forward or
        # backward) on the adapter.
        return self.add_up_projection(y, linear(self.dropout(x), self.lora_A) * self.scaling)

    def add_up_projection(self, y: Tensor, z: Tensor) -> Tensor:
        """y + z B^T, the sum taken inside the GEMM; z: the scaled r-wide tensor (a column slice of a stacked one
        is read in place)."""
        return add_up_projection(y, z, self.lora_B)

    @torch.no_grad()
    def refresh_merged(self) -> None:
        """Recompute the merged buffers from the adapter as it is now (after each optimizer step)."""
        dt = self.merged_weight.dtype
        # W + s B A summed in the GEMM's fp32 accumulator and rounded once.
        torch.addmm(self.weight.to(dt), self.lora_B.to(dt), self.lora_A.to(dt), alpha=self.scaling,
                    out=self.merged_weight)
        torch.mul(self.lora_A, self.scaling, out=self.scaled_A)
        torch.mul(self.lora_B, self.scaling, out=self.scaled_B)

    @torch.no_grad()
    def merged(self, dtype: torch.dtype | None = None) -> Linear:
        """The model's own Linear with the adapter folded into its weight, in `dtype` (None: the frozen weight's).
        The sum is taken in fp32 and rounded once: a bf16 base exported to fp32 keeps all of the adapter."""
        dtype = dtype or self.weight.dtype
        # Built on the meta device: a real one would first fill its weight with a random init, only to overwrite it.
        out = Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        w = self.weight.to(torch.float32, copy=True)  # the sum in fp32, in place in one copy of W
        w.addmm_(self.lora_B.float(), self.lora_A.float(), alpha=self.scaling)
        out.weight = nn.Parameter(w.to(dtype), requires_grad=False)
        if self.bias is not None:
            out.bias = nn.Parameter(self.bias.detach().to(dtype, copy=True), requires_grad=False)
        return out


# Projections that read the same input (q/k/v; gate/up) run their adapters' down-projections as one GEMM:
# x is read once to produce all their r-wide tensors, and in the backward one GEMM gives the stacked A's
# gradient and one gives x's, where each adapter would read x, and write a full-width gradient of x, on its
# own. The adapters stay separate parameters with their Hugging Face names. Off: each adapter runs alone.
# It pays where the frozen GEMMs are fast and the rank-r ones, bound by memory, are a larger share of the step:
# on a CPU with AMX (BENCHMARKS.md, session 25); without AMX it measured even (session 17).
STACK_SHARED_INPUT = True


def _hooked(module: nn.Module) -> bool:
    """Whether a forward hook watches `module`: a stacked adapter's projection runs without its module call."""
    return bool(module._forward_hooks or module._forward_pre_hooks or nn_module._global_forward_hooks
                or nn_module._global_forward_pre_hooks)


def _stackable(projections: tuple[nn.Module, ...]) -> list[int]:
    """Positions of the adapters among `projections` that can share one down-projection: same rank, scale and
    dtype, no dropout (each adapter draws its own dropout mask, which a shared GEMM could not give), and no
    forward hook (a hook on q_proj sees q_proj's call, which a stacked adapter does not make)."""
    if not STACK_SHARED_INPUT:
        return []
    found = [i for i, p in enumerate(projections) if isinstance(p, LoRALinear) and isinstance(p.dropout, nn.Identity)
             and not _hooked(p)]
    if len(found) < 2:
        return []
    first = projections[found[0]]
    if any(projections[i].rank != first.rank or projections[i].scaling != first.scaling
           or projections[i].lora_A.dtype != first.lora_A.dtype for i in found):
        return []
    return found


def project(x: Tensor, *projections: nn.Module) -> tuple[Tensor, ...]:
    """Each of `projections` applied to x, as `tuple(p(x) for p in projections)`; adapters that can share a
    down-projection (STACK_SHARED_INPUT) compute it in one GEMM, through their merged weights where training
    holds them (MergedTraining)."""
    if all(runs_merged(x, p) and not _hooked(p) for p in projections):
        return merged_projections(x, projections)
    stacked = _stackable(projections)
    if not stacked:
        return tuple(p(x) for p in projections)
    first = projections[stacked[0]]
    r = first.rank
    # [.., k r]; its column slices are views, which addmm reads in place with a leading dimension of k r.
    z = linear(x, torch.cat([projections[i].lora_A for i in stacked])) * first.scaling
    out = []
    for i, p in enumerate(projections):
        if i not in stacked:
            out.append(p(x))
            continue
        j = stacked.index(i)
        out.append(p.add_up_projection(F.linear(x, p.weight, p.bias), z[..., j * r:(j + 1) * r]))
    return tuple(out)


# Off: LoRA trains as written, each projection's adapter in GEMMs of its own (benchmarks/merged_lora.py compares).
MERGED_TRAINING = True


def merged_dtype(device: torch.device, amp_dtype: torch.dtype | None, world: int) -> torch.dtype | None:
    """The dtype train() holds merged weights in (MergedTraining), None for none: bf16 GEMMs on a CPU with AMX,
    one process. Measured there only; a DDP run would also broadcast the buffers every step."""
    on = MERGED_TRAINING and device.type == "cpu" and amp_dtype == torch.bfloat16 and world == 1 and cpu_has_amx()
    return amp_dtype if on else None


def mergeable(adapter: LoRALinear) -> bool:
    """Whether `adapter` can train through merged weights: no dropout, which only the adapter's input takes; no
    forward hook, which a merged q/k/v would skip; no bias, which the merged GEMMs leave out; a frozen weight."""
    return (isinstance(adapter.dropout, nn.Identity) and not _hooked(adapter) and adapter.bias is None
            and not adapter.weight.requires_grad)


class MergedTraining:
    """For a training run, the merged buffers (in `dtype`, the GEMMs'; None: none) of each adapter of `model`
    that is `mergeable` and holds a whole weight, not an FSDP shard. The adapters then train through
    llama_ft.model.merged_lora. `refresh()` after each optimizer step; `close()` drops the buffers
    (the frozen weights' size once more), and the model runs as written again."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None):
        self.adapters = [a for _, _, a in adapters(model) if mergeable(a)] if dtype is not None else []
        for a in self.adapters:
            dev = a.weight.device
            a.merged_weight = torch.empty(a.out_features, a.in_features, dtype=dtype, device=dev)
            a.scaled_A = torch.empty(a.rank, a.in_features, dtype=dtype, device=dev)
            a.scaled_B = torch.empty(a.out_features, a.rank, dtype=dtype, device=dev)
        self.refresh()

    def refresh(self) -> None:
        for a in self.adapters:
            a.refresh_merged()

    def close(self) -> None:
        for a in self.adapters:
            a.merged_weight = a.scaled_A = a.scaled_B = None


def add_lora(module: nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0,
             targets: tuple[str, ...] = TARGETS, layers: list[int] | None = None) -> list[str]:
    """Wrap the target projections of the chosen decoder layers in LoRA; returns the wrapped names."""
    alpha = float(2 * rank if alpha is None else alpha)
    wrapped = []
    for name, mod in list(module.named_modules()):
        parts = name.split(".")
        if "layers" not in parts or len(parts) < parts.index("layers") + 3:
            continue
        idx = int(parts[parts.index("layers") + 1])
        if layers is not None and idx not in layers:
            continue
        for child_name, child in list(mod.named_children()):
            if child_name in targets and type(child) in (nn.Linear, Linear):
                setattr(mod, child_name, LoRALinear(child, rank, alpha, dropout))
                wrapped.append(f"{name}.{child_name}")
    return wrapped


def adapters(model: nn.Module) -> list[tuple[nn.Module, str, LoRALinear]]:
    """(parent, attribute name, adapter) of every LoRALinear in `model` whose weights are whole tensors on this
    process (an FSDP shard is a DTensor: only its forward, which gathers it, sees the whole weight)."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, LoRALinear) and type(child.weight.data) is torch.Tensor:
                found.append((parent, name, child))
    return found


@contextmanager
def merged_adapters(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """For the duration, every adapter of `model` is replaced by a plain Linear holding a copy of its frozen
    weight with the adapter folded in (LoRALinear.merged); yields how many. An inference pass then runs one GEMM
    per projection, as the model without adapters does: unmerged, each projection adds two GEMMs that read the
    whole activation to produce an r-wide one, and an addmm that reads and writes the whole output again, all
    bound by memory. The copies cost the adapted weights' size once more for the duration; the adapters, their
    frozen weights and the optimizer's references are untouched and back in place on exit. Inference only: no
    gradient reaches an adapter through its merged copy."""
    swaps = adapters(model) if enabled else []
    try:
        with torch.no_grad():
            for parent, name, adapter in swaps:
                setattr(parent, name, adapter.merged())
        yield len(swaps)
    finally:
        for parent, name, adapter in swaps:
            setattr(parent, name, adapter)
