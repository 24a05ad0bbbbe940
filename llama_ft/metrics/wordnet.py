"""WordNet 3.0 lemma names for METEOR's synonym stage, read from the database files as nltk's WordNet reader
reads them (nltk.corpus.wordnet.synsets(word), then each synset's lemma names), without building what METEOR
never asks for.

A word's synsets, per part of speech in the order noun, verb, adjective, adverb: the word is lowercased; its
base forms are the word itself and either its entries in that part of speech's exception list (`noun.exc`:
"geese goose") or, when it has none, the forms one substitution of the detachment rules gives (nouns: -s, -ses
-> -s, -ves -> -f, -xes -> -x, -zes -> -z, -ches -> -ch, -shes -> -sh, -men -> -man, -ies -> -y; verbs: -s, -ies
-> -y, -es -> -e, -es, -ed -> -e, -ed, -ing -> -e, -ing; adjectives: -er, -est, -er -> -e, -est -> -e; adverbs
none); each distinct base form found in that part of speech's index lists its synsets' byte offsets in the data
file. A synset's line there holds its words (the hex count in the fourth field, then word / lex_id pairs), each
without a trailing syntactic marker such as "(a)" or "(ip)".

nltk's reader parses every index line and scans the adjective data file when it opens (2.4 s and 141 MB on a
2-core Xeon, against 0.08 s and 54 MB here; BENCHMARKS.md, session 24). Here each index line is kept as it is and
parsed when its lemma is asked for, and the data files are held as bytes, a synset's line cut out when a lemma
points at it.
"""
from __future__ import annotations

import re
from pathlib import Path

# The parts of speech in the order nltk's synsets() visits them, with their files' suffixes.
PARTS = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
DETACHMENT_RULES = {
    "n": (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}
_MARKER = re.compile(r"\([^()]*\)$")


class WordNet:
    """The lemma names of a word's synsets, from a WordNet 3.0 database folder (index.*, data.*, *.exc)."""

    def __init__(self, folder: str | Path):
        self.folder = folder = Path(folder)
        self._index: dict[str, dict[str, str]] = {}
        self._exceptions: dict[str, dict[str, list[str]]] = {}
        self._data: dict[str, bytes] = {}
        for pos, suffix in PARTS.items():
            lines = (folder / f"index.{suffix}").read_text(encoding="utf-8").splitlines()
            # The license header's lines start with a space; each other line starts with its lemma.
            self._index[pos] = {line[:line.index(" ")]: line for line in lines if line and line[0] != " "}
            self._exceptions[pos] = {}
            for line in (folder / f"{suffix}.exc").read_text(encoding="utf-8").splitlines():
                terms = line.split()
                if terms:
                    self._exceptions[pos][terms[0]] = terms[1:]
            self._data[pos] = (folder / f"data.{suffix}").read_bytes()

    def base_forms(self, word: str, pos: str) -> list[str]:
        """The forms of lowercased `word` that `pos`'s index lists (the word itself first), as nltk's morphy."""
        index = self._index[pos]
        exceptions = self._exceptions[pos].get(word)
        if exceptions is not None:
            forms = exceptions
        else:
            forms = [word[:-len(old)] + new for old, new in DETACHMENT_RULES[pos] if word.endswith(old)]
        return [form for form in dict.fromkeys([word, *forms]) if form in index]

    def offsets(self, lemma: str, pos: str) -> list[int]:
        """The data-file byte offsets of `lemma`'s synsets in `pos` (its index line's last synset_cnt fields)."""
        fields = self._index[pos][lemma].split()
        return [int(offset) for offset in fields[len(fields) - int(fields[2]):]]

    def lemma_names(self, pos: str, offset: int) -> list[str]:
        """The words of the synset at `offset` in `pos`'s data file, syntactic markers removed."""
        data = self._data[pos]
        line = data[offset:data.index(b"\n", offset)].decode("utf-8")
        fields = line.split(" ", 4 + 2 * 255)  # a synset has at most 255 words (a two-digit hex count)
        if int(fields[0]) != offset:
            raise ValueError(f"WordNet data.{PARTS[pos]}: no synset at byte {offset}; rebuild the data root "
                             "(python -m llama_ft.metrics.nltk_data).")
        count = int(fields[3], 16)
        return [_MARKER.sub("", name) for name in fields[4:4 + 2 * count:2]]

    def synonyms(self, word: str) -> list[str]:
        """Every lemma name of every synset of `word` (nltk: [l.name() for s in wordnet.synsets(word) for l in
        s.lemmas()]), in nltk's order."""
        word = word.lower()
        return [name for pos in PARTS for form in self.base_forms(word, pos)
                for offset in self.offsets(form, pos) for name in self.lemma_names(pos, offset)]
