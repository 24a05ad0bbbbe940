"""llama_ft/metrics/paired.py against scipy's paired bootstrap, and the per-question SQuAD scores it resamples
against the official means, on real dev-open questions."""

import numpy as np
import pytest
from metrics_squad_pairs import SQUAD_DEV
from scipy import stats

from llama_ft.metrics import (
    paired_bootstrap,
    paired_squad,
    squad_em_f1,
    squad_em_f1_per_question,
    squad_v2,
)
from llama_ft.metrics.inputs import load_squad_dataset


@pytest.fixture(scope="module")
def dev():
    """The first 1,000 dev-open questions, and two imperfect runs over them: one answers with the first gold
    answer's first two words, the other with the whole first gold answer on every third question and its last
    word elsewhere."""
    references = dict(list(load_squad_dataset(SQUAD_DEV).items())[:1000])
    first = {qid: golds[0] for qid, golds in references.items()}
    before = {qid: " ".join(text.split()[:2]) for qid, text in first.items()}
    after = {qid: text if i % 3 == 0 else text.split()[-1] for i, (qid, text) in enumerate(first.items())}
    return references, before, after


def test_per_question_scores_average_to_the_official_scores(dev):
    references, before, after = dev
    after = dict(list(after.items())[1:])  # a missing prediction scores 0 under v1.1 (a copy: the fixture is shared)
    for predictions in (before, after):
        per = squad_em_f1_per_question(predictions, references)
        assert list(per) == list(references)
        official = squad_em_f1(predictions, references)
        assert 100 * sum(em for em, _ in per.values()) / len(per) == pytest.approx(official["exact_match"], abs=1e-9)
        assert 100 * sum(f1 for _, f1 in per.values()) / len(per) == pytest.approx(official["f1"], abs=1e-9)
    # Unanswerable questions: the v2.0 rules, and a missing prediction counts as the empty answer.
    v2 = {**references, "unanswerable-1": [], "unanswerable-2": []}
    predictions = {**after, "unanswerable-1": "", "unanswerable-2": "a guess"}
    per = squad_em_f1_per_question(predictions, v2)
    assert per["unanswerable-1"] == (1.0, 1.0) and per["unanswerable-2"] == (0.0, 0.0)
    official = squad_v2({qid: predictions.get(qid, "") for qid in v2}, v2)
    assert 100 * sum(f1 for _, f1 in per.values()) / len(per) == pytest.approx(official["f1"], abs=1e-9)


def test_the_interval_is_scipys_paired_percentile_bootstrap(dev):
    references, before, after = dev
    a = np.array([100 * f1 for _, f1 in squad_em_f1_per_question(before, references).values()])
    b = np.array([100 * f1 for _, f1 in squad_em_f1_per_question(after, references).values()])
    ours = paired_bootstrap(a, b, resamples=20_000, seed=1)
    theirs = stats.bootstrap((a, b), lambda x, y, axis: np.mean(y - x, axis=axis), paired=True, vectorized=True,
                             n_resamples=20_000, confidence_level=0.95, method="percentile",
                             random_state=np.random.default_rng(2)).confidence_interval
    assert ours["mean_difference"] == pytest.approx(b.mean() - a.mean(), abs=1e-12)
    # Two Monte Carlo estimates of the same quantiles: each end agrees to well under a tenth of a point, a few
    # times their sampling error at 20,000 resamples; an unpaired bootstrap's interval would be far wider.
    assert ours["low"] == pytest.approx(theirs.low, abs=0.1) and ours["high"] == pytest.approx(theirs.high, abs=0.1)
    assert ours["high"] - ours["low"] > 1.0  # not a degenerate interval
    assert ours["better"] == int((b > a).sum()) and ours["worse"] == int((b < a).sum())
    assert paired_bootstrap(a, b, seed=1) == paired_bootstrap(a, b, seed=1)  # deterministic


def test_paired_squad_pairs_the_questions_both_runs_scored(dev):
    references, before, after = dev
    per_before = squad_em_f1_per_question(before, references)
    per_after = squad_em_f1_per_question(after, references)
    paired = paired_squad(per_before, per_after)
    official = {name: squad_em_f1(p, references) for name, p in (("before", before), ("after", after))}
    for metric in ("exact_match", "f1"):
        assert paired[metric]["mean_difference"] == pytest.approx(
            official["after"][metric] - official["before"][metric], abs=1e-9)
        assert paired[metric]["n"] == len(references)
    # Only the questions both hold are paired.
    fewer = dict(list(per_after.items())[:300])
    assert paired_squad(per_before, fewer)["f1"]["n"] == 300


@pytest.mark.parametrize("before, after, kwargs, message", [
    ([1.0, 2.0], [1.0], {}, "paired"),
    ([1.0], [2.0], {}, "at least 2"),
    ([1.0, 2.0], [2.0, 3.0], {"confidence": 95}, "fraction"),
    ([1.0, 2.0], [2.0, 3.0], {"resamples": 10}, "at least 100"),
])
def test_bad_input_says_what_to_do(before, after, kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(before, after, **kwargs)
    with pytest.raises(ValueError, match="same questions"):
        paired_squad({"a": (1.0, 1.0)}, {"b": (0.0, 0.0)})

