"""ROUGE-N, ROUGE-L and ROUGE-Lsum as google-research's rouge-score computes them, and evaluate's aggregation.

Tokens: lowercase, every run of characters outside [a-z0-9] becomes a space (so "café" gives "caf"), optional
Porter stemming of tokens longer than 3 characters. With several references a prediction keeps, per ROUGE
type, the reference with the highest F-measure (the first one on a tie). Scores are 0-1.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")
_VALID_TOKEN = re.compile(r"^[a-z0-9]+$")


class Score(NamedTuple):
    precision: float
    recall: float
    fmeasure: float


_ZERO = Score(0.0, 0.0, 0.0)


def rouge_tokenize(text: str, use_stemmer: bool = False) -> list[str]:
    """Return rouge-score's tokens of `text`: lowercased [a-z0-9]+ runs; over 3 letters stemmed if asked."""
    tokens = _NON_ALPHANUMERIC.sub(" ", text.lower()).split()
    if use_stemmer:
        tokens = [_stem(token) if len(token) > 3 else token for token in tokens]
    return [token for token in tokens if _VALID_TOKEN.match(token)]


@lru_cache(maxsize=2**16)
def _stem(token: str) -> str:
    return _porter().stem(token)


@lru_cache(maxsize=1)
def _porter():
    try:
        from nltk.stem.porter import PorterStemmer  # only stemming needs nltk
    except ImportError:
        raise ImportError("ROUGE with use_stemmer=True needs nltk: pip install 'llama_ft[metrics]'") from None

    return PorterStemmer()  # mode NLTK_EXTENSIONS, as rouge-score uses it


def _fmeasure(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_n(prediction: Sequence[str], reference: Sequence[str], n: int) -> Score:
    """Return ROUGE-N of two token lists: clipped n-gram overlap over each side's n-gram count."""
    pred = Counter(tuple(prediction[i : i + n]) for i in range(len(prediction) - n + 1))
    ref = Counter(tuple(reference[i : i + n]) for i in range(len(reference) - n + 1))
    overlap = sum(min(count, pred.get(ngram, 0)) for ngram, count in ref.items())
    precision = overlap / max(sum(pred.values()), 1)
    recall = overlap / max(sum(ref.values()), 1)
    return Score(precision, recall, _fmeasure(precision, recall))


def _lcs_table(ref: Sequence[str], pred: Sequence[str]) -> list[list[int]]:
    table = [[0] * (len(pred) + 1) for _ in range(len(ref) + 1)]
    for i, ref_token in enumerate(ref, 1):
        row, above = table[i], table[i - 1]
        for j, pred_token in enumerate(pred, 1):
            row[j] = above[j - 1] + 1 if ref_token == pred_token else max(above[j], row[j - 1])
    return table


def rouge_l(prediction: Sequence[str], reference: Sequence[str]) -> Score:
    """Return ROUGE-L of two token lists: longest common subsequence over their lengths; 0 if one is empty."""
    if not prediction or not reference:
        return _ZERO
    lcs = _lcs_table(reference, prediction)[-1][-1]
    precision, recall = lcs / len(prediction), lcs / len(reference)
    return Score(precision, recall, _fmeasure(precision, recall))


def _lcs_positions(ref: Sequence[str], pred: Sequence[str]) -> list[int]:
    """Positions in `ref` of one LCS, read back from the end (a tie moves up a row, as rouge-score does)."""
    table = _lcs_table(ref, pred)
    i, j, positions = len(ref), len(pred), []
    while i > 0 and j > 0:
        if ref[i - 1] == pred[j - 1]:
            positions.append(i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return positions


def rouge_lsum(prediction: str, reference: str, use_stemmer: bool = False) -> Score:
    """Return ROUGE-Lsum of two texts whose sentences are separated by newlines: summary-level union LCS."""
    ref_sents = [rouge_tokenize(line, use_stemmer) for line in reference.split("\n") if line]
    pred_sents = [rouge_tokenize(line, use_stemmer) for line in prediction.split("\n") if line]
    ref_total, pred_total = sum(map(len, ref_sents)), sum(map(len, pred_sents))
    if not ref_total or not pred_total:
        return _ZERO
    ref_left = Counter(token for sent in ref_sents for token in sent)
    pred_left = Counter(token for sent in pred_sents for token in sent)
    hits = 0
    for ref in ref_sents:
        union = sorted(set().union(*(_lcs_positions(ref, pred) for pred in pred_sents)))
        for token in (ref[i] for i in union):
            # a token is credited at most as often as it occurs in each summary
            if ref_left[token] > 0 and pred_left[token] > 0:
                hits += 1
                ref_left[token] -= 1
                pred_left[token] -= 1
    precision, recall = hits / pred_total, hits / ref_total
    return Score(precision, recall, _fmeasure(precision, recall))


def rouge_scores(
    prediction: str,
    references: str | Sequence[str],
    rouge_types: Sequence[str] = ROUGE_TYPES,
    use_stemmer: bool = False,
) -> dict[str, Score]:
    """Return {rouge_type: Score} for one prediction, per type from the reference with the best F-measure."""
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("ROUGE: a prediction has an empty list of references; give it at least one")
    pred_tokens = rouge_tokenize(prediction, use_stemmer)
    per_ref = []
    for ref in dict.fromkeys(refs):  # a repeated reference scores the same, and ties keep the first anyway
        ref_tokens = rouge_tokenize(ref, use_stemmer)
        scores = {}
        for rouge_type in rouge_types:
            if rouge_type == "rougeL":
                scores[rouge_type] = rouge_l(pred_tokens, ref_tokens)
            elif rouge_type == "rougeLsum" and "\n" not in prediction and "\n" not in ref:
                # one sentence on each side: the summary-level union LCS is the plain LCS, i.e. rougeL
                scores[rouge_type] = scores.get("rougeL") or rouge_l(pred_tokens, ref_tokens)
            elif rouge_type == "rougeLsum":
                scores[rouge_type] = rouge_lsum(prediction, ref, use_stemmer)
            elif re.fullmatch(r"rouge[1-9]", rouge_type):
                scores[rouge_type] = rouge_n(pred_tokens, ref_tokens, int(rouge_type[5:]))
            else:
                raise ValueError(
                    f"ROUGE: unknown rouge type {rouge_type!r}; use rouge1..rouge9, rougeL or rougeLsum"
                )
        per_ref.append(scores)
    best = {}
    for rouge_type in rouge_types:
        best_f = max(scores[rouge_type].fmeasure for scores in per_ref)
        best[rouge_type] = next(s[rouge_type] for s in per_ref if s[rouge_type].fmeasure == best_f)
    return best


def rouge(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    rouge_types: Sequence[str] = ROUGE_TYPES,
    use_stemmer: bool = False,
    aggregate: str | None = "bootstrap",
    seed: int = 0,
    n_samples: int = 1000,
) -> dict[str, float | list[float]]:
    """Return {rouge_type: F-measure}: evaluate's bootstrap median ('bootstrap'), the plain mean ('mean'), or
    per-example lists (None).

    'bootstrap' is what evaluate's "rouge" reports by default: for each type in order, `n_samples` resamples
    with replacement drawn from numpy's legacy RandomState(seed), and the median (np.percentile 50) of their
    means. evaluate's seed is its `seed` argument, else the first word of numpy's global state, N right after
    np.random.seed(N).
    """
    if len(references) != len(predictions):
        raise ValueError(f"ROUGE: {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("ROUGE: no predictions to score")
    per_example = [rouge_scores(p, r, rouge_types, use_stemmer) for p, r in zip(predictions, references)]
    fmeasures = {t: np.array([scores[t].fmeasure for scores in per_example]) for t in rouge_types}
    if aggregate is None:
        return {t: f.tolist() for t, f in fmeasures.items()}
    if aggregate == "mean":
        return {t: float(np.mean(f)) for t, f in fmeasures.items()}
    if aggregate != "bootstrap":
        raise ValueError(f"ROUGE: aggregate must be 'bootstrap', 'mean' or None, not {aggregate!r}")
    rng = np.random.RandomState(seed)
    return {t: _bootstrap_median(f, rng, n_samples) for t, f in fmeasures.items()}


def _bootstrap_median(values: np.ndarray, rng: np.random.RandomState, n_samples: int) -> float:
    n = len(values)
    means = np.empty(n_samples)
    # resamples drawn a chunk at a time: the same stream as one draw each, in bounded memory
    chunk = max(1, 2**22 // n)
    for start in range(0, n_samples, chunk):
        stop = min(start + chunk, n_samples)
        # np.mean over rouge-score's (n, 3) score matrix adds the rows one after the other: a running sum
        means[start:stop] = np.cumsum(values[rng.randint(0, n, size=(stop - start, n))], axis=1)[:, -1] / n
    return float(np.percentile(means, 50))
