"""METEOR as nltk.translate.meteor_score computes it, on NLTK's word_tokenize tokens (as evaluate's "meteor").

Alignment in three stages, each over the words left unaligned by the one before: (1) exact match of lowercased
words, (2) match of their Porter stems, (3) WordNet synonyms: a hypothesis word matches a reference word that
is one of the single-word lemma names of its synsets, or the word itself. Stage 3 looks up the STEMS left over
from stage 2, as NLTK does (so happy/glad never match, car/auto do). In every stage the hypothesis is read
from its last word and each word takes the last still-free reference word it may match.

Score: P = m/len(hyp), R = m/len(ref), Fmean = P*R / (alpha*P + (1-alpha)*R),
penalty = gamma * (chunks/m)**beta, METEOR = (1 - penalty) * Fmean, 0 when nothing matches; the best over
several references.

WordNet and the punkt tables come from the data root built by `python -m llama_ft.metrics.nltk_data`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from itertools import pairwise

import numpy as np

import llama_ft.metrics.nltk_data as nltk_data
from llama_ft.metrics.wordnet import WordNet

_PLAIN = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")
_CONTRACTIONS = ("cannot", "gimme", "gonna", "gotta", "lemme", "wanna")  # each splits after its 3rd letter


def _split_contraction(word: str) -> tuple[str, ...]:
    return (word[:3], word[3:]) if word.lower() in _CONTRACTIONS else (word,)


class _Lexicon:
    """Tokens, Porter stems and WordNet synonyms, memoised (NLTK computes them again at every occurrence)."""

    def __init__(self, root: str):
        try:
            import nltk
            from nltk.stem.porter import PorterStemmer
        except ImportError:
            raise nltk_data.SetupError("METEOR needs nltk: pip install 'llama_ft[metrics]'") from None

        if root not in nltk.data.path:
            nltk.data.path.insert(0, root)  # nltk>=3.10 opens data files only under a listed data root
        self.wordnet = WordNet(f"{root}/{nltk_data.WORDNET_DIR.as_posix()}")
        self._word_tokenize = nltk.word_tokenize
        self._stemmer = PorterStemmer()
        self._tokens: dict[str, list[str]] = {}
        self._stems: dict[str, str] = {}
        self._synonyms: dict[str, frozenset[str]] = {}

    def tokenize(self, text: str) -> list[str]:
        """nltk.word_tokenize(text), lowercased; each distinct string once (SQuAD repeats its answers)."""
        if text not in self._tokens:
            if _PLAIN.fullmatch(text):
                # ASCII words and single spaces: punkt finds no sentence end and, of the Treebank rules,
                # only the MacIntyre contractions apply (cannot -> can not); nltk's regex engine costs
                # 0.3 ms a call
                tokens = [part for word in text.split() for part in _split_contraction(word)]
            else:
                tokens = self._word_tokenize(text)
            self._tokens[text] = [token.lower() for token in tokens]
        return self._tokens[text]

    def stem(self, word: str) -> str:
        if word not in self._stems:
            self._stems[word] = self._stemmer.stem(word)
        return self._stems[word]

    def synonyms(self, word: str) -> frozenset[str]:
        if word not in self._synonyms:
            names = self.wordnet.synonyms(word)
            self._synonyms[word] = frozenset({name for name in names if "_" not in name} | {word})
        return self._synonyms[word]


@cache
def _lexicon_at(root: str) -> _Lexicon:
    return _Lexicon(root)


def _lexicon() -> _Lexicon:
    return _lexicon_at(str(nltk_data.require_root()))


def release_lexicon() -> None:
    """Drop the WordNet tables and memoised stems that METEOR keeps after its first call; the next call reads
    them again (seconds). For long phases that score nothing, such as training (BENCHMARKS.md, "Host memory")."""
    _lexicon_at.cache_clear()


def _match_stage(
    hyp: list[tuple[int, str]], ref: list[tuple[int, str]], candidates
) -> tuple[list, list, list]:
    """Align the words of `hyp` to words of `ref`; return (pairs of original indices, hyp left, ref left)."""
    if not hyp or not ref:
        return [], hyp, ref
    free = {}  # word -> its still-free positions in `ref`, ascending
    for position, (_, word) in enumerate(ref):
        free.setdefault(word, []).append(position)
    pairs, used_hyp, used_ref = [], set(), set()
    for h in range(len(hyp) - 1, -1, -1):
        options = [word for word in candidates(hyp[h][1]) if free.get(word)]
        if not options:
            continue
        best = max(options, key=lambda word: free[word][-1])
        r = free[best].pop()
        pairs.append((hyp[h][0], ref[r][0]))
        used_hyp.add(h)
        used_ref.add(r)
    return (
        pairs,
        [w for i, w in enumerate(hyp) if i not in used_hyp],
        [w for i, w in enumerate(ref) if i not in used_ref],
    )


def _align(hypothesis: list[str], reference: list[str], lexicon: _Lexicon) -> list[tuple[int, int]]:
    hyp, ref = list(enumerate(hypothesis)), list(enumerate(reference))
    exact, hyp, ref = _match_stage(hyp, ref, lambda word: (word,))
    hyp = [(i, lexicon.stem(word)) for i, word in hyp]
    ref = [(i, lexicon.stem(word)) for i, word in ref]
    stems, hyp, ref = _match_stage(hyp, ref, lambda word: (word,))
    synonyms, _, _ = _match_stage(hyp, ref, lexicon.synonyms)
    return sorted(exact + stems + synonyms)


def _chunks(alignment: list[tuple[int, int]]) -> int:
    """Runs of aligned words that are adjacent in both the hypothesis and the reference."""
    return 1 + sum(1 for (h0, r0), (h1, r1) in pairwise(alignment) if not (h1 == h0 + 1 and r1 == r0 + 1))


def single_meteor(
    reference: Sequence[str],
    hypothesis: Sequence[str],
    alpha: float = 0.9,
    beta: float = 3.0,
    gamma: float = 0.5,
) -> float:
    """Return the METEOR score (0-1) of one tokenised hypothesis against one tokenised reference."""
    if isinstance(reference, str) or isinstance(hypothesis, str):
        raise TypeError("METEOR: give token lists, not strings (tokenise with nltk.word_tokenize)")
    lower = [word.lower() for word in reference], [word.lower() for word in hypothesis]
    return _score(*lower, alpha, beta, gamma, _lexicon())


def _score(
    reference: list[str], hypothesis: list[str], alpha: float, beta: float, gamma: float, lexicon: _Lexicon
) -> float:
    """METEOR of lowercased token lists."""
    alignment = _align(hypothesis, reference, lexicon)
    matches = len(alignment)
    if matches == 0:
        return 0.0
    precision = matches / len(hypothesis)
    recall = matches / len(reference)
    fmean = (precision * recall) / (alpha * precision + (1 - alpha) * recall)
    penalty = gamma * (_chunks(alignment) / matches) ** beta
    return (1 - penalty) * fmean


def meteor(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    alpha: float = 0.9,
    beta: float = 3.0,
    gamma: float = 0.5,
) -> float:
    """Return evaluate's "meteor" (0-1): the mean over examples of the best METEOR over their references."""
    if len(references) != len(predictions):
        raise ValueError(f"METEOR: {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("METEOR: no predictions to score")
    lexicon = _lexicon()
    scores = []
    for prediction, refs in zip(predictions, references):
        # a repeated reference scores the same
        refs = [refs] if isinstance(refs, str) else dict.fromkeys(refs)
        if not refs:
            raise ValueError("METEOR: a prediction has an empty list of references; give it at least one")
        hypothesis = lexicon.tokenize(prediction)
        best = max(_score(lexicon.tokenize(ref), hypothesis, alpha, beta, gamma, lexicon) for ref in refs)
        scores.append(best)
    return float(np.mean(scores))
