"""torch.compile for training: the trainable decoder blocks, compiled in place, and when that pays (`auto`).

Each block is compiled on its own (`nn.Module.compile`), so parameter names, the state dict and exports stay as
they are, and the frozen bottom under the trunk cache is never traced. Dynamo inlines the module's parameters as
graph inputs, so one graph serves every block of the same kind (with or without LoRA). A new batch length
recompiles once, after which the length dimension is dynamic: a run sees a handful of compilations, not one per
length (`CompileStats` counts them into the run's result).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

# `auto` compiles once the first eager steps project at least this much more training: the warm-up (about a
# minute on a CPU, BENCHMARKS.md) is then repaid at the speed-ups compile gives on the step.
AUTO_MIN_SECONDS = 300.0
AUTO_PROBE_STEPS = 2


@dataclass
class CompileStats:
    """What compilation cost a run: when it started, its warm-up step's extra seconds, and graphs compiled."""
    at_step: int | None = None
    warmup_seconds: float = 0.0
    frames_compiled: int = 0
    recompiles: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"at_step": self.at_step, "warmup_seconds": round(self.warmup_seconds, 2),
                "frames_compiled": self.frames_compiled}


def trainable_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks that hold a trainable parameter (the only ones that run with autograd)."""
    return [layer for layer in model.backbone.layers if any(p.requires_grad for p in layer.parameters())]


def compile_blocks(model: nn.Module) -> int:
    """Compile every trainable decoder block in place; returns how many."""
    blocks = trainable_blocks(model)
    for layer in blocks:
        layer.compile()
    return len(blocks)


def is_compiled(model: nn.Module) -> bool:
    return any(getattr(layer, "_compiled_call_impl", None) is not None for layer in model.backbone.layers)


def compile_pays(step_seconds: float, steps_left: int, min_seconds: float = AUTO_MIN_SECONDS) -> bool:
    """`auto`'s rule: compile when the eager steps still to run would take at least `min_seconds`."""
    return step_seconds * steps_left >= min_seconds


def frames_compiled() -> int:
    """Frames dynamo has compiled in this process so far (graph compilations, recompiles included)."""
    from torch._dynamo.utils import counters  # dynamo's own bookkeeping, imported only when compiling
    return int(counters["stats"]["unique_graphs"])


def reset_compile_counters() -> None:
    torch._dynamo.utils.counters.clear()
