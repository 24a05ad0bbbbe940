"""Accuracy, precision, recall, F1 and the confusion matrix, as scikit-learn (and evaluate's wrappers) do.

Classes are the sorted union of the labels in y_true and y_pred. Per class: precision = tp/(tp+fp), recall =
tp/(tp+fn), F1 = 2tp/(2tp+fp+fn). Averages: 'binary' (the `pos_label` class only), 'macro' (plain mean over
classes), 'weighted' (mean weighted by each class's true count; weighted recall always equals accuracy). A
ratio with a zero denominator takes `zero_division`: "warn" (0.0 and a warning), 0.0, 1.0, or nan (the class
is then left out of the average).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Sequence

import numpy as np

AVERAGES = ("binary", "macro", "weighted")


class UndefinedMetricWarning(UserWarning):
    """A precision, recall or F1 had a zero denominator and was set to 0.0."""


def class_labels(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> list:
    """Return the sorted classes present in either sequence (they must all be numbers or all be strings)."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"classification: {len(y_true)} true labels but {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("classification: no labels to score")
    try:
        return sorted(set(y_true) | set(y_pred))
    except TypeError:
        raise ValueError("classification: labels mix strings and numbers; use one type for every label") from None


def confusion_matrix(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> np.ndarray:
    """Return the counts C[i, j] of examples of class i predicted as class j, classes as in `class_labels`."""
    labels = class_labels(y_true, y_pred)
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(matrix, ([index[y] for y in y_true], [index[y] for y in y_pred]), 1)
    return matrix


def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Return the fraction (0-1) of predictions equal to the true label."""
    class_labels(y_true, y_pred)
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def precision_recall_f1(
    y_true: Sequence[Hashable],
    y_pred: Sequence[Hashable],
    average: str = "binary",
    pos_label: Hashable = 1,
    zero_division: str | float = "warn",
) -> dict[str, float]:
    """Return {'precision', 'recall', 'f1'} (0-1) averaged as sklearn's precision_recall_fscore_support."""
    if average not in AVERAGES:
        raise ValueError(f"classification: average must be one of {AVERAGES}, not {average!r}")
    if not (zero_division == "warn" or zero_division in (0, 1) or _is_nan(zero_division)):
        raise ValueError(
            f"classification: zero_division must be 'warn', 0.0, 1.0 or nan, not {zero_division!r}"
        )
    labels = class_labels(y_true, y_pred)
    matrix = confusion_matrix(y_true, y_pred)
    tp = np.diag(matrix).astype(np.float64)
    true_count, pred_count = matrix.sum(axis=1), matrix.sum(axis=0)
    if average == "binary":
        if len(labels) > 2:
            raise ValueError(
                f"classification: average='binary' needs at most 2 classes, found {len(labels)} "
                f"({labels[:5]}...); use 'macro' or 'weighted'"
            )
        if pos_label not in labels:
            if len(labels) == 2:
                raise ValueError(
                    f"classification: pos_label={pos_label!r} is not one of the classes {labels}"
                )
            tp, true_count, pred_count = np.zeros(1), np.zeros(1), np.zeros(1)
        else:
            keep = [labels.index(pos_label)]
            tp, true_count, pred_count = tp[keep], true_count[keep], pred_count[keep]
    scores = {
        "precision": _divide(tp, pred_count, zero_division, "precision", "predicted"),
        "recall": _divide(tp, true_count, zero_division, "recall", "true"),
        "f1": _divide(2 * tp, true_count + pred_count, zero_division, "F1", "true nor predicted"),
    }
    weights = true_count if average == "weighted" else None
    return {name: _nan_average(values, weights) for name, values in scores.items()}


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _divide(
    numerator: np.ndarray, denominator: np.ndarray, zero_division: str | float, metric: str, kind: str
) -> np.ndarray:
    undefined = denominator == 0
    result = numerator / np.where(undefined, 1, denominator)
    if undefined.any():
        result[undefined] = 0.0 if zero_division == "warn" else float(zero_division)
        if zero_division == "warn":
            warnings.warn(
                f"{metric} is ill-defined and set to 0.0 for classes with no {kind} samples; "
                "choose the value with zero_division",
                UndefinedMetricWarning,
                stacklevel=3,
            )
    return result


def _nan_average(values: np.ndarray, weights: np.ndarray | None) -> float:
    """Average leaving nan entries out (zero_division=nan); all weights zero falls back to the plain mean."""
    keep = ~np.isnan(values)
    if not keep.any():
        return float("nan")
    if weights is None or weights[keep].sum() == 0:
        return float(np.average(values[keep]))
    return float(np.average(values[keep], weights=weights[keep]))
