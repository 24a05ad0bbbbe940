"""llama_ft/metrics/meteor.py against nltk.translate.meteor_score, with real WordNet 3.0 and word_tokenize.

These tests need the data built by `python -m llama_ft.metrics.nltk_data`; without it they fail with that
command.
"""

import warnings
from pathlib import Path

import nltk
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from metrics_squad_pairs import squad_pairs, squad_questions
from nltk.corpus.reader.wordnet import WordNetCorpusReader
from nltk.translate.meteor_score import meteor_score, single_meteor_score

from llama_ft.metrics import SetupError, meteor, release_lexicon, single_meteor
from llama_ft.metrics.meteor import _lexicon
from llama_ft.metrics.nltk_data import ROOT_ENV, SETUP_COMMAND, require_root

PAIRS = squad_pairs()
PREDICTIONS = [prediction for _, prediction, _, _ in PAIRS]
REFERENCES = [list(golds) for _, _, golds, _ in PAIRS]
DOCTEST_HYP = [
    "It",
    "is",
    "a",
    "guide",
    "to",
    "action",
    "which",
    "ensures",
    "that",
    "the",
    "military",
    "always",
    "obeys",
    "the",
    "commands",
    "of",
    "the",
    "party",
]
DOCTEST_REF = [
    "It",
    "is",
    "a",
    "guide",
    "to",
    "action",
    "that",
    "ensures",
    "that",
    "the",
    "military",
    "will",
    "forever",
    "heed",
    "Party",
    "commands",
]


@pytest.fixture(scope="module")
def nltk_wordnet():
    """nltk's WordNetCorpusReader on the data root METEOR reads (the reference for its own WordNet reader)."""
    try:
        root = str(require_root())
    except SetupError as err:
        pytest.fail(str(err))
    assert _lexicon().wordnet.folder == Path(root, "corpora", "wordnet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the multilingual functions are not available": English only
        wordnet = WordNetCorpusReader(f"{root}/corpora/wordnet", None)
    # nltk's own lookup, as `from nltk.corpus import wordnet` would do it, finds the same folder
    assert nltk.data.find("corpora/wordnet").path == wordnet.root.path
    return wordnet


def test_wordnet_synonyms_are_nltks_lemma_names_of_every_synset(nltk_wordnet, tokens):
    # Every word of the SQuAD pairs, of 150 dev contexts, and inflections that exercise each part of speech's
    # exception list and detachment rules, against nltk: the same names in the same order.
    words = {w.lower() for toks in tokens.values() for w in toks}
    contexts = list(dict.fromkeys(q["context"] for q in squad_questions()))[:150]
    words |= {w.lower() for ctx in contexts for w in nltk.word_tokenize(ctx)}
    words |= {"geese", "went", "better", "best", "mice", "children", "boxes", "churches", "wolves", "running",
              "happiest", "larger", "studies", "fishermen", "axes", "was", "are", "ran", "Paris", "U.S.", ""}
    ours = _lexicon().wordnet
    found = 0
    for word in sorted(words):
        expected = [lemma.name() for synset in nltk_wordnet.synsets(word) for lemma in synset.lemmas()]
        assert ours.synonyms(word) == expected, word
        found += bool(expected)
    assert len(words) > 5000 and found > 3000


@pytest.fixture(scope="module")
def tokens():
    """nltk.word_tokenize of every text of the pairs, computed once."""
    texts = set(PREDICTIONS) | {r for refs in REFERENCES for r in refs}
    return {text: nltk.word_tokenize(text) for text in texts}


def test_nltk_doctest_value(nltk_wordnet):
    assert single_meteor(DOCTEST_REF, DOCTEST_HYP) == 0.6944444444444445
    assert single_meteor_score(DOCTEST_REF, DOCTEST_HYP, wordnet=nltk_wordnet) == 0.6944444444444445
    assert single_meteor(["this", "is", "a", "cat"], ["non", "matching", "hypothesis"]) == 0.0


def test_synonym_stage_sees_stems_like_nltk(nltk_wordnet):
    # WordNet knows car/auto and happy/glad, but stage 3 looks up the Porter stem "happi", as nltk does
    for ref, hyp in (
        (["auto"], ["car"]),
        (["glad"], ["happy"]),
        (["large"], ["big"]),
        (["movie"], ["films"]),
    ):
        assert single_meteor(ref, hyp) == single_meteor_score(ref, hyp, wordnet=nltk_wordnet)
    assert single_meteor(["auto"], ["car"]) > 0 and single_meteor(["glad"], ["happy"]) == 0.0


def test_released_lexicon_is_read_again_with_the_same_scores(nltk_wordnet):
    before = _lexicon()
    score = single_meteor(["auto"], ["car"])
    release_lexicon()  # for long phases that score nothing: hands WordNet's tables back
    assert _lexicon() is not before
    assert single_meteor(["auto"], ["car"]) == score == single_meteor_score(["auto"], ["car"], wordnet=nltk_wordnet)


def test_corpus_meteor_equals_evaluate_on_real_pairs(nltk_wordnet, tokens):
    """evaluate's "meteor": word_tokenize both sides, meteor_score over the references, np.mean."""
    reference_scores = [
        meteor_score([tokens[r] for r in refs], tokens[p], wordnet=nltk_wordnet)
        for p, refs in zip(PREDICTIONS, REFERENCES)
    ]
    assert meteor(PREDICTIONS, REFERENCES) == pytest.approx(float(np.mean(reference_scores)), abs=1e-12)
    predictions, single = PREDICTIONS[::3], [refs[-1] for refs in REFERENCES[::3]]
    single_scores = [
        single_meteor_score(tokens[r], tokens[p], wordnet=nltk_wordnet) for p, r in zip(predictions, single)
    ]
    assert meteor(predictions, single) == pytest.approx(float(np.mean(single_scores)), abs=1e-12)
    ours = [meteor([p], [refs]) for p, refs in zip(PREDICTIONS, REFERENCES)]
    assert ours == pytest.approx(reference_scores, abs=1e-12)
    assert sum(score > 0 for score in ours) > len(ours) // 2


def test_parameters_and_errors(nltk_wordnet):
    for alpha, beta, gamma in ((0.5, 1.0, 0.2), (0.95, 4.0, 0.9)):
        assert single_meteor(DOCTEST_REF, DOCTEST_HYP, alpha, beta, gamma) == pytest.approx(
            single_meteor_score(
                DOCTEST_REF, DOCTEST_HYP, wordnet=nltk_wordnet, alpha=alpha, beta=beta, gamma=gamma
            ),
            abs=1e-12,
        )
    with pytest.raises(TypeError, match="token lists"):
        single_meteor("a cat", ["a", "cat"])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        meteor(["a", "b"], ["a"])


def test_missing_data_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "absent"))
    with pytest.raises(SetupError) as error:
        meteor(["a cat"], ["a cat"])
    assert SETUP_COMMAND in str(error.value) and "absent does not exist" in str(error.value)


CONTRACTIONS = ("cannot", "Cannot", "gonna", "gotta", "gimme", "lemme", "wanna", "Wanna")
plain_words = st.sampled_from(CONTRACTIONS + ("can", "not", "na", "x1", "42", "The", "cannotx"))


@settings(max_examples=200, deadline=None)
@given(st.lists(plain_words, min_size=1, max_size=6).map(" ".join))
def test_plain_text_shortcut_tokenizes_as_word_tokenize(text):
    assert _lexicon().tokenize(text) == [token.lower() for token in nltk.word_tokenize(text)]


def test_tokens_equal_word_tokenize_on_the_pairs(tokens):
    lexicon = _lexicon()
    for text, expected in tokens.items():
        assert lexicon.tokenize(text) == [token.lower() for token in expected]


words = st.lists(
    st.sampled_from(
        ["the", "cat", "cats", "sat", "on", "a", "mat", "car", "auto", "big", "large", "Party", "party", "."]
    ),
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(words, words)
def test_range_and_identity(reference, hypothesis):
    score = single_meteor(reference, hypothesis)
    assert 0.0 <= score <= 1.0
    if hypothesis:
        assert single_meteor(hypothesis, hypothesis) >= score - 1e-12
