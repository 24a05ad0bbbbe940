"""llama_ft/metrics/squad.py against a plain re-statement of the official SQuAD v1.1 / v2.0 evaluation."""

import random
import re
import string
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from metrics_squad_pairs import squad_pairs

from llama_ft.metrics import exact_match_score, f1_score, f1_score_v2, normalize_answer, squad_v1, squad_v2


# ---- the official rules, written out plainly over the official dataset layout (the test's oracle) ----
def official_normalize(s):
    s = s.lower()
    exclude = set(string.punctuation)
    s = "".join(ch for ch in s if ch not in exclude)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def official_v1_f1(prediction, ground_truth):
    p, g = official_normalize(prediction).split(), official_normalize(ground_truth).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0
    precision, recall = 1.0 * same / len(p), 1.0 * same / len(g)
    return (2 * precision * recall) / (precision + recall)


def official_v1(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                truths = [a["text"] for a in qa["answers"]]
                pred = predictions[qa["id"]]
                exact_match += max(official_normalize(pred) == official_normalize(t) for t in truths)
                f1 += max(official_v1_f1(pred, t) for t in truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def official_v2_f1(a_gold, a_pred):
    gold = official_normalize(a_gold).split() if a_gold else []
    pred = official_normalize(a_pred).split() if a_pred else []
    same = sum((Counter(gold) & Counter(pred)).values())
    if len(gold) == 0 or len(pred) == 0:
        return int(gold == pred)
    if same == 0:
        return 0
    precision, recall = 1.0 * same / len(pred), 1.0 * same / len(gold)
    return (2 * precision * recall) / (precision + recall)


def official_v2(dataset, preds, na_probs, thresh=1.0):
    qas = [qa for article in dataset for p in article["paragraphs"] for qa in p["qas"]]
    has_ans = {qa["id"]: bool(qa["answers"]) for qa in qas}
    exact_raw, f1_raw = {}, {}
    for qa in qas:
        golds = [a["text"] for a in qa["answers"] if official_normalize(a["text"])] or [""]
        pred = preds[qa["id"]]
        exact_raw[qa["id"]] = max(int(official_normalize(g) == official_normalize(pred)) for g in golds)
        f1_raw[qa["id"]] = max(official_v2_f1(g, pred) for g in golds)

    def thresholded(scores):
        return {k: float(not has_ans[k]) if na_probs[k] > thresh else s for k, s in scores.items()}

    def summary(exact, f1, ids):
        return {
            "exact": 100.0 * sum(exact[k] for k in ids) / len(ids),
            "f1": 100.0 * sum(f1[k] for k in ids) / len(ids),
            "total": len(ids),
        }

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)
    out = summary(exact, f1, list(exact))
    for prefix, ids in (
        ("HasAns", [k for k in has_ans if has_ans[k]]),
        ("NoAns", [k for k in has_ans if not has_ans[k]]),
    ):
        if ids:
            out.update({f"{prefix}_{k}": v for k, v in summary(exact, f1, ids).items()})
    for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
        cur = best = sum(1 for k in has_ans if not has_ans[k])
        best_thresh = 0.0
        for qid in sorted(na_probs, key=lambda k: na_probs[k]):
            if qid not in raw:
                continue
            diff = raw[qid] if has_ans[qid] else (-1 if preds[qid] else 0)
            cur += diff
            if cur > best:
                best, best_thresh = cur, na_probs[qid]
        out[f"best_{name}"], out[f"best_{name}_thresh"] = 100.0 * best / len(raw), best_thresh
    return out


def as_dataset(references):
    return [
        {
            "paragraphs": [
                {
                    "qas": [
                        {"id": qid, "answers": [{"text": t} for t in golds]}
                        for qid, golds in references.items()
                    ]
                }
            ]
        }
    ]


# ---- parity on the real pairs ----
PAIRS = squad_pairs()
PREDICTIONS = {qid: prediction for qid, prediction, _, _ in PAIRS}
REFERENCES = {qid: list(golds) for qid, _, golds, _ in PAIRS}


def test_pairs_cover_every_kind():
    assert len(PAIRS) >= 1000
    assert {kind for *_, kind in PAIRS} >= {
        "exact",
        "truncated",
        "extended",
        "shuffled",
        "empty",
        "unicode",
        "numbers",
    }


def test_normalize_and_pair_scores_match_official():
    for _, prediction, golds, _ in PAIRS:
        for text in (prediction, *golds):
            assert normalize_answer(text) == official_normalize(text)
        for gold in golds:
            assert exact_match_score(prediction, gold) == (
                official_normalize(prediction) == official_normalize(gold)
            )
            assert f1_score(prediction, gold) == pytest.approx(official_v1_f1(prediction, gold), abs=1e-12)
            assert f1_score_v2(prediction, gold) == pytest.approx(official_v2_f1(gold, prediction), abs=1e-12)


def test_squad_v1_matches_official_with_missing_predictions():
    partial = {qid: p for i, (qid, p) in enumerate(PREDICTIONS.items()) if i % 7}
    for predictions in (PREDICTIONS, partial, {}):
        ours = squad_v1(predictions, REFERENCES)
        reference = official_v1(as_dataset(REFERENCES), predictions)
        assert ours.keys() == reference.keys()
        for key in ours:
            assert ours[key] == pytest.approx(reference[key], abs=1e-9)
    assert squad_v1({}, REFERENCES) == {"exact_match": 0.0, "f1": 0.0}


def _v2_case(seed):
    rng = random.Random(seed)
    references = {qid: (golds if rng.random() > 0.3 else []) for qid, golds in REFERENCES.items()}
    predictions = {qid: (p if rng.random() > 0.2 else "") for qid, p in PREDICTIONS.items()}
    # coarse probabilities make ties, which the stable sort must break in prediction order
    na_probs = {qid: rng.choice([0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 1.0, rng.random()]) for qid in predictions}
    return predictions, references, na_probs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_squad_v2_matches_official(seed):
    predictions, references, na_probs = _v2_case(seed)
    for thresh in (1.0, 0.5):
        official = official_v2(as_dataset(references), predictions, na_probs, thresh)
        ours = squad_v2(predictions, references, na_probs, na_prob_thresh=thresh, float32_probs=False)
        assert list(ours) == list(official)
        for key in official:
            assert ours[key] == pytest.approx(official[key], abs=1e-9), key
        assert ours["best_f1_thresh"] in set(na_probs.values()) | {0.0}


def test_squad_v2_float32_probabilities_like_evaluate():
    predictions, references, na_probs = _v2_case(3)
    as_float32 = {qid: float(np.float32(p)) for qid, p in na_probs.items()}
    ours = squad_v2(predictions, references, na_probs)
    official = official_v2(as_dataset(references), predictions, as_float32)
    for key in official:
        assert ours[key] == pytest.approx(official[key], abs=1e-9), key
    one = squad_v2({"q": "x", "r": ""}, {"q": ["x"], "r": []}, {"q": 0.1, "r": 0.2})
    assert one["best_exact_thresh"] == 0.10000000149011612  # evaluate's float32 feature, verified there
    assert (
        squad_v2({"q": "x", "r": ""}, {"q": ["x"], "r": []}, {"q": 0.1, "r": 0.2}, float32_probs=False)[
            "best_exact_thresh"
        ]
        == 0.1
    )


def test_squad_v2_evaluate_docstring_example():
    assert squad_v2({"56e10a3be3433e1400422b22": "1976"}, {"56e10a3be3433e1400422b22": ["1976"]}, None) == {
        "exact": 100.0,
        "f1": 100.0,
        "total": 1,
        "HasAns_exact": 100.0,
        "HasAns_f1": 100.0,
        "HasAns_total": 1,
        "best_exact": 100.0,
        "best_exact_thresh": 0.0,
        "best_f1": 100.0,
        "best_f1_thresh": 0.0,
    }


def test_edge_rules():
    assert f1_score("", "") == 0.0 and f1_score_v2("", "") == 1.0
    assert exact_match_score("The", "a") == 1.0  # both normalise to ""
    assert normalize_answer("The  Denver-Broncos!") == "denverbroncos"
    assert normalize_answer("Ünïcode “quotes”") == "ünïcode “quotes”"  # only ASCII punctuation goes
    with pytest.raises(ValueError, match="no gold answer"):
        squad_v1({"q": "x"}, {"q": []})
    with pytest.raises(ValueError, match="1 of 2 questions have no prediction"):
        squad_v2({"a": "x"}, {"a": ["x"], "b": ["y"]})
    with pytest.raises(ValueError, match="no no-answer probability"):
        squad_v2({"a": "x"}, {"a": ["x"]}, {"b": 0.5})


# ---- properties ----
answers = st.text(alphabet=st.sampled_from(list("abc the an,.!'-\u00e9 ")), max_size=20)


@given(answers, answers)
def test_scores_in_range_symmetric_and_em_below_f1(prediction, gold):
    em, f1, f1_v2 = (
        exact_match_score(prediction, gold),
        f1_score(prediction, gold),
        f1_score_v2(prediction, gold),
    )
    assert 0.0 <= f1 <= 1.0 and 0.0 <= f1_v2 <= 1.0 and em in (0.0, 1.0)
    assert em <= f1_v2
    if normalize_answer(gold):
        assert em <= f1  # v1 scores two empty answers 0 in F1 but 1 in EM
    assert em == exact_match_score(gold, prediction)
    assert f1 == pytest.approx(f1_score(gold, prediction), abs=1e-12)
    assert f1_v2 == pytest.approx(f1_score_v2(gold, prediction), abs=1e-12)


@given(st.lists(st.tuples(answers, st.lists(answers, min_size=1, max_size=3)), min_size=1, max_size=8))
def test_corpus_scores_in_range(rows):
    predictions = {str(i): p for i, (p, _) in enumerate(rows)}
    references = {str(i): g for i, (_, g) in enumerate(rows)}
    v1 = squad_v1(predictions, references)
    assert 0.0 <= v1["exact_match"] <= 100.0 and 0.0 <= v1["f1"] <= 100.0
    v2 = squad_v2(predictions, references)
    assert all(0.0 <= v2[k] <= 100.0 for k in ("exact", "f1", "best_exact", "best_f1"))
    assert v2["exact"] <= v2["best_exact"] + 1e-9
