"""Corpus BLEU in the two conventions people quote, both on the mteval-v13a tokenisation.

- `bleu`: evaluate's "bleu" metric, i.e. tensorflow/nmt `compute_bleu`: clipped n-gram matches against the
  union of the references, the SHORTEST reference length per segment, no smoothing by default; 0-1.
- `sacrebleu_corpus_bleu`: sacrebleu's `corpus_bleu` defaults (2.6.0): the CLOSEST reference length, 'exp'
  smoothing; 0-100.

References are given per prediction: a string, or a list of strings when a prediction has several.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache

# mteval-v13a: space around punctuation and symbols, around . and , unless between digits, and after a dash
# that follows a digit.
_13A_RULES = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)
_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))
SACREBLEU_SMOOTHING = {"exp": None, "none": None, "floor": 0.1, "add-k": 1}


def tokenize_13a(line: str) -> list[str]:
    """Return the mteval-v13a tokens of `line` (case kept), as sacrebleu's and evaluate's '13a' tokenizer."""
    return list(_tokens_13a(line))


@lru_cache(maxsize=2**16)
def _tokens_13a(line: str) -> tuple[str, ...]:
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        for entity, char in _ENTITIES:
            line = line.replace(entity, char)
    line = f" {line} "
    for pattern, replacement in _13A_RULES:
        line = pattern.sub(replacement, line)
    return tuple(line.split())


def _ngrams(tokens: Sequence[str], max_order: int) -> Counter:
    return Counter(
        tuple(tokens[i : i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1)
    )


def _reference_lists(references: Sequence[str | Sequence[str]], n_predictions: int) -> list[Sequence[str]]:
    if len(references) != n_predictions:
        raise ValueError(
            f"BLEU: {n_predictions} predictions but {len(references)} references; give one "
            "reference (or list of references) per prediction"
        )
    # a repeated reference changes neither the clipping counts nor the shortest or closest length
    lists = [[refs] if isinstance(refs, str) else list(dict.fromkeys(refs)) for refs in references]
    for i, refs in enumerate(lists):
        if not refs:
            raise ValueError(f"BLEU: prediction {i} has an empty list of references; give it at least one")
    return lists


def bleu(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    max_order: int = 4,
    smooth: bool = False,
    tokenizer: Callable[[str], Sequence[str]] = tokenize_13a,
) -> dict:
    """Return evaluate's "bleu" dict: bleu (0-1), precisions, brevity_penalty, length_ratio,
    translation_length, reference_length.

    When every prediction is empty evaluate raises ZeroDivisionError; here bleu, brevity_penalty and
    length_ratio are 0.0 (the limit). All references empty is a ValueError.
    """
    matches, possible = [0] * max_order, [0] * max_order
    translation_length = reference_length = 0
    for prediction, refs in zip(predictions, _reference_lists(references, len(predictions))):
        hyp = tokenizer(prediction)
        ref_tokens = [tokenizer(ref) for ref in refs]
        translation_length += len(hyp)
        reference_length += min(len(ref) for ref in ref_tokens)
        ref_ngrams = Counter()
        for ref in ref_tokens:
            ref_ngrams |= _ngrams(ref, max_order)
        for ngram, count in (_ngrams(hyp, max_order) & ref_ngrams).items():
            matches[len(ngram) - 1] += count
        for n in range(1, max_order + 1):
            possible[n - 1] += max(len(hyp) - n + 1, 0)
    if reference_length == 0:
        raise ValueError("BLEU: every reference is empty after tokenization, so the reference length is 0")

    precisions = []
    for n in range(max_order):
        if smooth and n > 0:  # Lin & Och 2004 add-one, on orders 2 and up only
            precisions.append((matches[n] + 1.0) / (possible[n] + 1.0))
        else:
            precisions.append(matches[n] / possible[n] if possible[n] > 0 else 0.0)
    geo_mean = (
        math.exp(sum((1.0 / max_order) * math.log(p) for p in precisions)) if min(precisions) > 0 else 0.0
    )
    ratio = translation_length / reference_length
    if ratio > 1.0:
        brevity_penalty = 1.0
    else:
        brevity_penalty = math.exp(1 - 1.0 / ratio) if ratio > 0 else 0.0
    return {
        "bleu": geo_mean * brevity_penalty,
        "precisions": precisions,
        "brevity_penalty": brevity_penalty,
        "length_ratio": ratio,
        "translation_length": translation_length,
        "reference_length": reference_length,
    }


def sacrebleu_corpus_bleu(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    lowercase: bool = False,
    smooth_method: str = "exp",
    smooth_value: float | None = None,
    use_effective_order: bool = False,
    max_order: int = 4,
) -> dict:
    """Return sacrebleu's corpus BLEU as evaluate's "sacrebleu" dict: score (0-100), counts, totals,
    precisions, bp, sys_len, ref_len."""
    if smooth_method not in SACREBLEU_SMOOTHING:
        raise ValueError(
            f"sacrebleu_corpus_bleu: smooth_method must be one of {sorted(SACREBLEU_SMOOTHING)}, "
            f"not {smooth_method!r}"
        )
    if smooth_value is None:
        smooth_value = SACREBLEU_SMOOTHING[smooth_method]

    def tokens(text: str) -> list[str]:
        return tokenize_13a((text.lower() if lowercase else text).rstrip())

    correct, total = [0] * max_order, [0] * max_order
    sys_len = ref_len = 0
    for prediction, refs in zip(predictions, _reference_lists(references, len(predictions))):
        hyp = tokens(prediction)
        ref_tokens = [tokens(ref) for ref in refs]
        ref_ngrams = Counter()
        for ref in ref_tokens:
            ref_ngrams |= _ngrams(ref, max_order)
        sys_len += len(hyp)
        # closest reference length, the shorter one on a tie
        ref_len += min((abs(len(hyp) - len(ref)), len(ref)) for ref in ref_tokens)[1]
        for ngram, count in _ngrams(hyp, max_order).items():
            total[len(ngram) - 1] += count
            correct[len(ngram) - 1] += min(count, ref_ngrams.get(ngram, 0))

    bp = 1.0
    if sys_len < ref_len:
        bp = math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0
    precisions = [0.0] * max_order
    result = {
        "score": 0.0,
        "counts": correct,
        "totals": total,
        "precisions": precisions,
        "bp": bp,
        "sys_len": sys_len,
        "ref_len": ref_len,
    }
    if not any(correct):
        return result
    exp_factor, order = 1.0, max_order
    for n in range(max_order):
        if smooth_method == "add-k" and n > 0:
            correct[n] += smooth_value
            total[n] += smooth_value
        if total[n] == 0:
            break
        if use_effective_order:
            order = n + 1
        if correct[n] > 0:
            precisions[n] = 100.0 * correct[n] / total[n]
        elif smooth_method == "exp":  # mteval's NIST smoothing: 1/2^k for the k-th order without a match
            exp_factor *= 2
            precisions[n] = 100.0 / (exp_factor * total[n])
        elif smooth_method == "floor":
            precisions[n] = 100.0 * smooth_value / total[n]
    # a zero precision counts as log = -9999999999, which drives the score to 0.0
    result["score"] = bp * math.exp(
        sum([math.log(p) if p else -9999999999 for p in precisions[:order]]) / order
    )
    return result
