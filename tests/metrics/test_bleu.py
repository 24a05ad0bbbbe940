"""llama_ft/metrics/bleu.py against sacrebleu (tokenizer, corpus/sentence BLEU) and nltk's clipped counts."""

import math

import pytest
import sacrebleu
from hypothesis import given
from hypothesis import strategies as st
from metrics_squad_pairs import squad_pairs
from nltk.translate.bleu_score import modified_precision
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from llama_ft.metrics import bleu, sacrebleu_corpus_bleu, tokenize_13a

PAIRS = squad_pairs()
PREDICTIONS = [prediction for _, prediction, _, _ in PAIRS]
REFERENCES = [list(golds) for _, _, golds, _ in PAIRS]
SACRE_TOKENIZER = Tokenizer13a()


def chunks(size):
    return [(PREDICTIONS[i : i + size], REFERENCES[i : i + size]) for i in range(0, len(PAIRS), size)]


def nmt_bleu_oracle(predictions, references, max_order=4, smooth=False):
    """tensorflow/nmt compute_bleu on sacrebleu's 13a tokens, its clipped counts taken from nltk."""
    matches, possible, hyp_len, ref_len = [0] * max_order, [0] * max_order, 0, 0
    for prediction, refs in zip(predictions, references):
        hyp = SACRE_TOKENIZER(prediction).split()
        ref_tokens = [SACRE_TOKENIZER(r).split() for r in refs]
        hyp_len += len(hyp)
        ref_len += min(len(r) for r in ref_tokens)
        for n in range(1, min(max_order, len(hyp)) + 1):
            clipped = modified_precision(ref_tokens, hyp, n)
            matches[n - 1] += clipped.numerator
            possible[n - 1] += clipped.denominator
    precisions = [
        (m + 1) / (p + 1) if smooth and n > 0 else (m / p if p else 0.0)
        for n, (m, p) in enumerate(zip(matches, possible))
    ]
    geo = math.exp(sum(math.log(p) for p in precisions) / max_order) if min(precisions) > 0 else 0.0
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return {
        "bleu": geo * bp,
        "precisions": precisions,
        "brevity_penalty": bp,
        "length_ratio": hyp_len / ref_len,
        "translation_length": hyp_len,
        "reference_length": ref_len,
    }


def assert_close(ours, reference):
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, abs=1e-9, rel=1e-12), key


EDGE_LINES = [
    "",
    " ",
    "a-\nb",
    "x\ny",
    "&quot;q&quot; &amp;amp; &lt;&gt;",
    "<skipped> done",
    "3.5, 4,5 and 1-2",
    "U.S.A. e.g., end.",
    "{[(|)]}~^_`@",
    "a--b 1--2 -3",
    "café—naïve “x” ½",
    "trailing   \t",
]


def test_13a_tokens_equal_sacrebleu():
    for line in EDGE_LINES + PREDICTIONS + [r for refs in REFERENCES for r in refs]:
        assert tokenize_13a(line) == SACRE_TOKENIZER(line).split(), repr(line)


@pytest.mark.parametrize("smooth", [False, True])
def test_evaluate_bleu_matches_nmt_on_real_pairs(smooth):
    assert_close(
        bleu(PREDICTIONS, REFERENCES, smooth=smooth), nmt_bleu_oracle(PREDICTIONS, REFERENCES, smooth=smooth)
    )
    single = [refs[0] for refs in REFERENCES]
    assert_close(
        bleu(PREDICTIONS, single, smooth=smooth),
        nmt_bleu_oracle(PREDICTIONS, [[r] for r in single], smooth=smooth),
    )
    for predictions, references in chunks(13):
        if sum(len(tokenize_13a(p)) for p in predictions):
            assert_close(
                bleu(predictions, references, smooth=smooth),
                nmt_bleu_oracle(predictions, references, smooth=smooth),
            )


def test_evaluate_bleu_docstring_example_and_edges():
    result = bleu(
        ["hello there general kenobi", "foo bar foobar"],
        [["hello there general kenobi", "hello there!"], ["foo bar foobar"]],
    )
    assert result["bleu"] == 1.0 and result["translation_length"] == 7 and result["reference_length"] == 6
    empty = bleu(["", " "], ["a b", "c"])  # evaluate raises ZeroDivisionError here; the limit is 0
    assert empty["bleu"] == 0.0 and empty["brevity_penalty"] == 0.0 and empty["reference_length"] == 3
    with pytest.raises(ValueError, match="every reference is empty"):
        bleu(["a"], [""])
    with pytest.raises(ValueError, match="empty list of references"):
        bleu(["a"], [[]])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        bleu(["a", "b"], ["a"])


def sacre_reference(predictions, references, **kwargs):
    streams = [
        [refs[k] if k < len(refs) else None for refs in references] for k in range(max(map(len, references)))
    ]
    score = sacrebleu.corpus_bleu(predictions, streams, **kwargs)
    return {
        "score": score.score,
        "counts": score.counts,
        "totals": score.totals,
        "precisions": score.precisions,
        "bp": score.bp,
        "sys_len": score.sys_len,
        "ref_len": score.ref_len,
    }


SACRE_OPTIONS = [
    {},
    {"lowercase": True},
    {"smooth_method": "none"},
    {"smooth_method": "floor"},
    {"smooth_method": "floor", "smooth_value": 0.3},
    {"smooth_method": "add-k"},
    {"use_effective_order": True},
]


@pytest.mark.parametrize(
    "options", SACRE_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults"
)
def test_sacrebleu_corpus_bleu_matches_sacrebleu(options):
    assert_close(
        sacrebleu_corpus_bleu(PREDICTIONS, REFERENCES, **options),
        sacre_reference(PREDICTIONS, REFERENCES, **options),
    )
    for predictions, references in chunks(7):
        assert_close(
            sacrebleu_corpus_bleu(predictions, references, **options),
            sacre_reference(predictions, references, **options),
        )


def test_sentence_level_equals_sacrebleu_sentence_bleu():
    for prediction, refs in zip(PREDICTIONS[:400], REFERENCES[:400]):
        ours = sacrebleu_corpus_bleu([prediction], [refs], use_effective_order=True)
        assert ours["score"] == pytest.approx(sacrebleu.sentence_bleu(prediction, refs).score, abs=1e-9)


def test_sacrebleu_rejects_unknown_smoothing():
    with pytest.raises(ValueError, match="smooth_method must be one of"):
        sacrebleu_corpus_bleu(["a"], ["a"], smooth_method="magic")


words = st.lists(
    st.sampled_from(["the", "cat", "sat", "on", "mat", ".", "1,000", "-", "Cat"]), min_size=0, max_size=9
)
texts = words.map(" ".join)


@given(st.lists(st.tuples(texts, st.lists(texts, min_size=1, max_size=3)), min_size=1, max_size=6))
def test_bleu_ranges(rows):
    predictions, references = [p for p, _ in rows], [r for _, r in rows]
    if sum(min(len(tokenize_13a(r)) for r in refs) for refs in references):  # else no reference length
        result = bleu(predictions, references)
        assert 0.0 <= result["bleu"] <= 1.0 and 0.0 <= result["brevity_penalty"] <= 1.0
        assert all(0.0 <= p <= 1.0 for p in result["precisions"])
    score = sacrebleu_corpus_bleu(predictions, references)
    assert 0.0 <= score["score"] <= 100.0 + 1e-9


@given(st.lists(words.filter(lambda w: len(w) >= 4).map(" ".join), min_size=1, max_size=5))
def test_identical_corpus_scores_perfectly(sentences):
    assert bleu(sentences, sentences)["bleu"] == pytest.approx(1.0)
    assert sacrebleu_corpus_bleu(sentences, sentences)["score"] == pytest.approx(100.0)
