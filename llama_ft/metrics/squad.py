"""SQuAD exact match and token F1, as the official v1.1 and v2.0 evaluation scripts compute them.

References are `{question_id: [gold answer texts]}`; predictions are `{question_id: answer_text}`. An empty
gold list means "no answer" (SQuAD v2.0). Scores are percentages (0-100).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


@lru_cache(maxsize=2**17)  # SQuAD repeats its gold answers, and a report normalises each one four times
def normalize_answer(text: str) -> str:
    """Return `text` lowercased, without ASCII punctuation, articles and extra spaces (the official rule)."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    """Return 1.0 when both answers normalise to the same string, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Return the v1.1 token F1 (0-1) of two answers; no common token, even two empty answers, gives 0."""
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def f1_score_v2(prediction: str, ground_truth: str) -> float:
    """Return the v2.0 token F1 (0-1): as v1.1, except that two empty answers score 1."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    if not pred or not gold:
        return float(pred == gold)
    return _token_f1(pred, gold)


def _token_f1(pred: list[str], gold: list[str]) -> float:
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred)
    recall = common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_v1(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Return {'exact_match', 'f1'} (0-100): best over the gold answers; no prediction scores 0."""
    if not references:
        raise ValueError("squad_v1: no reference questions to score")
    return _percentages(squad_v1_per_question(predictions, references))


def squad_v1_per_question(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]
                          ) -> dict[str, tuple[float, float]]:
    """{question_id: (exact match, F1)} (0-1) by the official v1.1 rules; `squad_v1` is their mean."""
    scores = {}
    for qid, golds in references.items():
        if not golds:
            raise ValueError(
                f"squad_v1: question {qid!r} has no gold answer; SQuAD v1.1 needs at least one "
                "(score unanswerable questions with squad_v2)"
            )
        if qid not in predictions:  # the official rule: a question without prediction scores 0
            scores[qid] = (0.0, 0.0)
            continue
        prediction = predictions[qid]
        scores[qid] = (max(exact_match_score(prediction, gold) for gold in golds),
                       max(f1_score(prediction, gold) for gold in golds))
    return scores


def squad_em_f1_per_question(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]
                             ) -> dict[str, tuple[float, float]]:
    """{question_id: (exact match, F1)} (0-1) by the rules `squad_em_f1` picks; its scores are these means
    x 100. Paired comparisons of two runs (`llama_ft.metrics.paired`) resample these."""
    if all(references.values()):
        return squad_v1_per_question(predictions, references)
    return {qid: _v2_raw(predictions.get(qid, ""), golds) for qid, golds in references.items()}


def _v2_raw(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """One question's (exact, F1) by the v2.0 script: the gold answers that normalise to nothing count as ''."""
    golds = [gold for gold in golds if normalize_answer(gold)] or [""]
    return (max(exact_match_score(prediction, gold) for gold in golds),
            max(f1_score_v2(prediction, gold) for gold in golds))


def squad_em_f1(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """{'exact_match', 'f1'} (0-100) by the rules the data needs: SQuAD v1.1's when every question has a gold
    answer (a missing prediction scores 0); v2.0's when any has none (`squad_v2`'s exact and f1: the empty
    answer to an unanswerable question scores 1 in both, and a missing prediction counts as that answer)."""
    if not references:
        raise ValueError("squad_em_f1: no reference questions to score")
    return _percentages(squad_em_f1_per_question(predictions, references))


def _percentages(scores: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """The mean per-question (exact match, F1) as {'exact_match', 'f1'} in 0-100."""
    return {"exact_match": 100.0 * sum(em for em, _ in scores.values()) / len(scores),
            "f1": 100.0 * sum(f1 for _, f1 in scores.values()) / len(scores)}


def squad_v2(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
    float32_probs: bool = True,
) -> dict[str, float | int]:
    """Return evaluate's squad_v2 dict: exact, f1, total, HasAns_*, NoAns_*, best_exact/f1 and thresholds.

    `na_probs` maps question ids to the probability of "no answer" (None: 0.0 for each prediction). A question
    whose probability exceeds `na_prob_thresh` is scored as a "no answer" prediction. With `float32_probs` the
    probabilities are rounded to float32 first, as evaluate stores them, so thresholds read e.g.
    0.10000000149011612; False follows the official script. Each question needs a prediction ('' = no answer).
    """
    missing = [qid for qid in references if qid not in predictions]
    if missing:
        raise ValueError(
            f"squad_v2: {len(missing)} of {len(references)} questions have no prediction "
            f"(first: {missing[0]!r}); give each one an answer, '' meaning 'no answer'"
        )
    if na_probs is None:
        na_probs = {qid: 0.0 for qid in predictions}
    missing = [qid for qid in references if qid not in na_probs]
    if missing:
        raise ValueError(
            f"squad_v2: {len(missing)} questions have no no-answer probability "
            f"(first: {missing[0]!r}); give one per question or pass na_probs=None"
        )
    if float32_probs:
        na_probs = {qid: float(np.float32(p)) for qid, p in na_probs.items()}
    has_answer = {qid: bool(golds) for qid, golds in references.items()}

    exact_raw, f1_raw = {}, {}
    for qid, golds in references.items():
        exact_raw[qid], f1_raw[qid] = _v2_raw(predictions[qid], golds)

    def thresholded(raw: dict[str, float]) -> dict[str, float]:
        return {
            qid: float(not has_answer[qid]) if na_probs[qid] > na_prob_thresh else score
            for qid, score in raw.items()
        }

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)
    result = _totals(exact, f1, list(references), "")
    result.update(_totals(exact, f1, [qid for qid in references if has_answer[qid]], "HasAns_"))
    result.update(_totals(exact, f1, [qid for qid in references if not has_answer[qid]], "NoAns_"))
    result["best_exact"], result["best_exact_thresh"] = _best_threshold(
        predictions, exact_raw, na_probs, has_answer
    )
    result["best_f1"], result["best_f1_thresh"] = _best_threshold(predictions, f1_raw, na_probs, has_answer)
    return result


def _totals(
    exact: dict[str, float], f1: dict[str, float], qids: list[str], prefix: str
) -> dict[str, float | int]:
    if not qids:
        return {}
    return {
        f"{prefix}exact": 100.0 * sum(exact[qid] for qid in qids) / len(qids),
        f"{prefix}f1": 100.0 * sum(f1[qid] for qid in qids) / len(qids),
        f"{prefix}total": len(qids),
    }


def _best_threshold(
    predictions: Mapping[str, str],
    raw: dict[str, float],
    na_probs: Mapping[str, float],
    has_answer: dict[str, bool],
) -> tuple[float, float]:
    """The no-answer threshold that maximises the score (answer the questions at or below it)."""
    score = best = sum(not answerable for answerable in has_answer.values())
    threshold = 0.0
    for qid in sorted(na_probs, key=na_probs.get):
        if qid not in raw:
            continue
        if has_answer[qid]:
            score += raw[qid]
        elif predictions[qid]:
            score -= 1
        if score > best:
            best, threshold = score, na_probs[qid]
    return 100.0 * best / len(raw), threshold
