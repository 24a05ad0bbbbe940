"""llama_ft/metrics/rouge.py against rouge-score 0.1.2: tokenizer, scorer, bootstrap seeded as evaluate."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from metrics_squad_pairs import squad_pairs
from nltk.stem import porter
from rouge_score import rouge_scorer, scoring, tokenize

from llama_ft.metrics import ROUGE_TYPES, rouge, rouge_scores, rouge_tokenize

PAIRS = squad_pairs()
PREDICTIONS = [prediction for _, prediction, _, _ in PAIRS]
REFERENCES = [list(golds) for _, _, golds, _ in PAIRS]
MULTILINE = [
    "one two\nthree four two\n\nfive",
    "a b c\nb c a\nc a b",
    "x\n \ny z",
    "\n\n",
    "the cat\nsat on the mat",
]


def test_tokens_equal_rouge_score():
    stemmer = porter.PorterStemmer()
    for text in PREDICTIONS + MULTILINE + ["Café naïve İstanbul 3.5% x-ray", "running runs ran", ""]:
        assert rouge_tokenize(text) == tokenize.tokenize(text, None)
        assert rouge_tokenize(text, use_stemmer=True) == tokenize.tokenize(text, stemmer)


def assert_same_scores(ours, reference):
    assert list(ours) == list(reference)
    for rouge_type in reference:
        assert tuple(ours[rouge_type]) == pytest.approx(tuple(reference[rouge_type]), abs=1e-12), rouge_type


@pytest.fixture(scope="module")
def reference_scores():
    """rouge-score's score_multi of every pair, computed once."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES))
    return [scorer.score_multi(refs, prediction) for prediction, refs in zip(PREDICTIONS, REFERENCES)]


def test_pair_scores_equal_rouge_score(reference_scores):
    for prediction, refs, reference in zip(PREDICTIONS, REFERENCES, reference_scores):
        assert_same_scores(rouge_scores(prediction, refs), reference)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES))
    for prediction, refs in [(m, [n, m[::-1]]) for m in MULTILINE for n in MULTILINE]:
        assert_same_scores(rouge_scores(prediction, refs), scorer.score_multi(refs, prediction))
        assert_same_scores(rouge_scores(prediction, refs[0]), scorer.score(refs[0], prediction))


def test_stemmed_pair_scores_equal_rouge_score():
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    for prediction, refs in list(zip(PREDICTIONS, REFERENCES))[::4]:
        assert_same_scores(
            rouge_scores(prediction, refs, use_stemmer=True), scorer.score_multi(refs, prediction)
        )


def evaluate_rouge(scores, seed):
    """evaluate's "rouge" (use_aggregator): np.random.seed, score_multi, BootstrapAggregator, mid.fmeasure."""
    aggregator = scoring.BootstrapAggregator()
    for score in scores:
        aggregator.add_scores(score)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return {key: score.mid.fmeasure for key, score in aggregator.aggregate().items()}
    finally:
        np.random.set_state(state)


def test_bootstrap_median_equals_evaluate_aggregation(reference_scores):
    assert rouge(PREDICTIONS, REFERENCES, seed=0) == evaluate_rouge(reference_scores, 0)
    few = [{t: s[t] for t in ("rougeL", "rouge1")} for s in reference_scores[:37]]
    assert rouge(PREDICTIONS[:37], REFERENCES[:37], ("rougeL", "rouge1"), seed=42) == evaluate_rouge(few, 42)


def test_mean_and_per_example_aggregations(reference_scores):
    per_example = rouge(PREDICTIONS, REFERENCES, aggregate=None)
    means = rouge(PREDICTIONS, REFERENCES, aggregate="mean")
    for rouge_type in ROUGE_TYPES:
        fmeasures = [s[rouge_type].fmeasure for s in reference_scores]
        assert per_example[rouge_type] == pytest.approx(fmeasures, abs=1e-12)
        assert means[rouge_type] == pytest.approx(np.mean(fmeasures), abs=1e-12)
    # the bootstrap median is what evaluate reports, and it is not the mean
    assert rouge(PREDICTIONS, REFERENCES)["rouge1"] != means["rouge1"]


def test_errors():
    with pytest.raises(ValueError, match="unknown rouge type"):
        rouge_scores("a", "a", ["rougeX"])
    with pytest.raises(ValueError, match="empty list of references"):
        rouge_scores("a", [])
    with pytest.raises(ValueError, match="aggregate must be"):
        rouge(["a"], ["a"], aggregate="max")


text = st.lists(
    st.sampled_from(["the", "cat", "Cat", "sat", "on", "mat", "\n", "runs", "running", "!", "é"]), max_size=12
).map(" ".join)


@given(text, text)
def test_ranges_and_symmetry(a, b):
    ab, ba = rouge_scores(a, b), rouge_scores(b, a)
    for rouge_type in ROUGE_TYPES:
        assert all(0.0 <= value <= 1.0 for value in ab[rouge_type])
        if rouge_type != "rougeLsum":  # the summary-level union LCS is not symmetric
            assert ab[rouge_type].precision == pytest.approx(ba[rouge_type].recall, abs=1e-12)
            assert ab[rouge_type].fmeasure == pytest.approx(ba[rouge_type].fmeasure, abs=1e-12)
