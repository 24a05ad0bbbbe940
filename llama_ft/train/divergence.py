"""Stopping a run that went wrong: non-finite values, and divergence (a loss or gradient norm far too large).

A diverged run must never be checkpointed as good nor exported, so `train` raises one of these errors; the
message names the step, the value and the last good checkpoint.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

GRAD_HISTORY = 5  # steps of gradient norms before their running mean is trusted as a reference


class TrainingError(RuntimeError):
    """Training itself went wrong (not a usage error): the run stopped and its last weights are not to be used."""


class NonFiniteError(TrainingError):
    """A loss or gradient became NaN/inf; the run stopped before the optimizer step."""


class DivergenceError(TrainingError):
    """The loss or the gradient norm rose far above its reference (TrainConfig.divergence_factor)."""


def chance_loss(task: str, lengths: np.ndarray, num_labels: int = 2) -> float:
    """The loss of uniform predictions: ln(labels) for classification, the mean ln(length) for QA spans."""
    if task == "classification":
        return math.log(num_labels)
    return float(np.log(np.maximum(lengths, 1)).mean()) if len(lengths) else 0.0


class DivergenceGuard:
    """Tells when a loss or gradient norm shows divergence, given the run's history.

    The loss reference is the largest of chance level, the run's first loss (its starting level) and the mean of
    all losses so far: a loss above `factor` times it has diverged. Taking the largest keeps a hard batch late in
    a converged run (10x its small running mean, but still near chance) from stopping it. A gradient norm above
    `factor`**2 times the mean of the finite norms so far (once GRAD_HISTORY of them exist) has exploded; fp16
    overflows (inf norms, skipped by the gradient scaler) are not counted."""

    def __init__(self, factor: float | None, chance: float, losses: Sequence[float] = (),
                 grad_norms: Sequence[float] = ()):
        self.factor, self.chance = factor, chance
        self.start = losses[0] if len(losses) else None
        self.loss_sum, self.loss_n = float(sum(losses)), len(losses)
        finite = [g for g in grad_norms if math.isfinite(g)]
        self.grad_sum, self.grad_n = float(sum(finite)), len(finite)

    def loss_reference(self) -> float:
        mean = self.loss_sum / self.loss_n if self.loss_n else 0.0
        return max(self.chance, self.start or 0.0, mean)

    def diverged(self, loss: float, grad_norm: float | None = None) -> str | None:
        """Why `loss` (and `grad_norm`) show divergence, or None."""
        if self.factor is None or self.start is None:
            return None
        if not math.isfinite(loss):
            return f"the loss is {loss}"
        ref = self.loss_reference()
        if loss > self.factor * ref:
            return (f"the loss {loss:.4g} is over {self.factor:g}x its reference {ref:.4g} (the largest of the "
                    "starting loss, the running mean and chance level)")
        if grad_norm is not None and math.isfinite(grad_norm) and self.grad_n >= GRAD_HISTORY:
            mean = self.grad_sum / self.grad_n
            if grad_norm > self.factor ** 2 * mean:
                return (f"the gradient norm {grad_norm:.4g} is over {self.factor ** 2:g}x its running mean "
                        f"{mean:.4g}")
        return None

    def record(self, loss: float, grad_norm: float) -> None:
        if self.start is None:
            self.start = loss
        self.loss_sum, self.loss_n = self.loss_sum + loss, self.loss_n + 1
        if math.isfinite(grad_norm):
            self.grad_sum, self.grad_n = self.grad_sum + grad_norm, self.grad_n + 1
