"""llama_ft/metrics/classification.py against scikit-learn (which evaluate's accuracy/precision/... wrap)."""

import math
import random
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
from hypothesis import given
from hypothesis import strategies as st

from llama_ft.metrics import (
    accuracy,
    classification_report,
    confusion_matrix,
    format_classification_table,
    precision_recall_f1,
)
from llama_ft.metrics.classification import UndefinedMetricWarning


def sklearn_scores(y_true, y_pred, average, zero_division):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, average=average, zero_division=zero_division
        )
    return {"precision": p, "recall": r, "f1": f}


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def label_cases():
    rng = random.Random(0)
    cases = [
        ([0, 0, 0], [0, 0, 0]),
        ([1, 1], [1, 1]),
        ([0, 1], [1, 0]),
        ([0, 0, 1], [0, 0, 0]),
        ([1, 0, 1], [1, 1, 1]),
        ([2, 2], [0, 1]),
        (["neg", "pos", "pos"], ["pos", "pos", "neg"]),
        ([0, 1, 2, 2], [0, 0, 0, 3]),
    ]  # class 3 only predicted, class 1 and 2 never predicted right
    for n, classes in ((20, 2), (50, 2), (200, 2), (30, 3), (100, 5), (7, 4)):
        y_true = [rng.randrange(classes) for _ in range(n)]
        y_pred = [rng.randrange(classes) if rng.random() < 0.6 else t for t in y_true]
        cases.append((y_true, y_pred))
    return cases


@pytest.mark.parametrize("zero_division", ["warn", 0.0, 1.0, np.nan])
@pytest.mark.parametrize("average", ["binary", "macro", "weighted"])
def test_precision_recall_f1_match_sklearn(average, zero_division):
    for y_true, y_pred in label_cases():
        labels = set(y_true) | set(y_pred)
        binary_ok = len(labels) <= 2 and (1 in labels or len(labels) < 2)
        if average == "binary" and not binary_ok:
            with pytest.raises(ValueError):
                precision_recall_f1(y_true, y_pred, average, zero_division=zero_division)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            ours = precision_recall_f1(y_true, y_pred, average, zero_division=zero_division)
        reference = sklearn_scores(y_true, y_pred, average, zero_division)
        assert all(same(ours[k], reference[k]) for k in reference), (y_true, y_pred, ours, reference)


def test_accuracy_and_confusion_matrix_match_sklearn():
    for y_true, y_pred in label_cases():
        assert accuracy(y_true, y_pred) == skm.accuracy_score(y_true, y_pred)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "a single label was found": expected in the one-class cases
            expected = skm.confusion_matrix(y_true, y_pred).tolist()
        assert confusion_matrix(y_true, y_pred).tolist() == expected


def test_warn_mode_warns_and_sets_zero():
    with pytest.warns(UndefinedMetricWarning, match="precision is ill-defined"):
        assert precision_recall_f1([1, 0], [0, 0], "binary")["precision"] == 0.0


def test_study_sst2_row_is_weighted():
    # METRICS_REFERENCE.md: N=716, tp=234 fn=83 fp=272 tn=127 gives the study's 50.42 / .5418 / .5042 / .4842
    y_true = [1] * 234 + [1] * 83 + [0] * 272 + [0] * 127
    y_pred = [1] * 234 + [0] * 83 + [1] * 272 + [0] * 127
    report = classification_report(y_true, y_pred)
    assert report["recall"] == pytest.approx(report["accuracy"], abs=1e-15)
    assert report["confusion_matrix"] == [[127, 272], [83, 234]] and report["labels"] == [0, 1]
    row = format_classification_table({"pre-trained": report}).splitlines()[-1]
    assert row == "| pre-trained | 50.42 | 0.5418 | 0.5042 | 0.4842 |"


def test_errors():
    with pytest.raises(ValueError, match="at most 2 classes"):
        precision_recall_f1([0, 1, 2], [0, 1, 2])
    with pytest.raises(ValueError, match="pos_label=1 is not one of the classes"):
        precision_recall_f1(["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="mix strings and numbers"):
        accuracy([0, "1"], [0, 1])
    with pytest.raises(ValueError, match="3 true labels but 2 predictions"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="no labels"):
        accuracy([], [])
    with pytest.raises(ValueError, match="average must be one of"):
        precision_recall_f1([0], [0], average="micro")


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40))
def test_weighted_recall_is_accuracy_and_ranges(rows):
    y_true, y_pred = [t for t, _ in rows], [p for _, p in rows]
    scores = precision_recall_f1(y_true, y_pred, "weighted", zero_division=0.0)
    assert scores["recall"] == pytest.approx(accuracy(y_true, y_pred), abs=1e-12)
    assert all(0.0 <= value <= 1.0 for value in scores.values())
    assert confusion_matrix(y_true, y_pred).sum() == len(rows)
