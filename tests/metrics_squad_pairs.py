"""Prediction/reference pairs for the metrics parity tests, from the real SQuAD v1.1 dev set in ../shared.

Each pair is (pair id, prediction, gold answers, kind); pair ids are unique, "<index>-<SQuAD question id>".
The predictions are made from the gold answers and their contexts: exact, another gold, truncated, extended
with neighbouring context words, shuffled, empty, wrong (another question's answer), case and punctuation
changes, unicode, numbers, newlines, HTML entities and odd whitespace. The data is read from ../shared, never
copied into the repository.
"""

from __future__ import annotations

import json
import random
import zipfile
from functools import cache, lru_cache
from pathlib import Path

SQUAD_DEV = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad_v1.1" / "dev-v1.1-open.json.zip"
)
KINDS = (
    "exact",
    "other_gold",
    "truncated",
    "extended",
    "shuffled",
    "empty",
    "wrong",
    "case_punct",
    "unicode",
    "numbers",
    "newline",
    "entities",
    "whitespace",
)
UNICODE_EDITS = (
    ("e", "é"),
    ("a", "å"),
    ("o", "ö"),
    ("u", "ü"),
    ("n", "ñ"),
    ("c", "ç"),
    ("i", "İ"),
    ("ss", "ß"),
)
UNICODE_WORDS = ("café", "naïve", "Zürich", "“quoted”", "—", "東京", "Ωmega", "ﬁne", "½", "١٢٣", "São Paulo")


@lru_cache(maxsize=1)
def squad_questions() -> list[dict]:
    """Every dev question as {'id', 'answers': [(text, start)], 'context'}."""
    if not SQUAD_DEV.is_file():
        raise FileNotFoundError(
            f"{SQUAD_DEV} is missing: the parity tests read the real SQuAD dev set from ../shared"
        )
    with zipfile.ZipFile(SQUAD_DEV) as archive:
        dataset = json.loads(archive.read("dev-v1.1-open.json"))
    return [
        {
            "id": qa["id"],
            "context": paragraph["context"],
            "answers": [(a["text"], a["answer_start"]) for a in qa["answers"]],
        }
        for article in dataset["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]


def _extended(question: dict, rng: random.Random) -> str:
    text, start = question["answers"][0]
    context = question["context"]
    before = context[:start].split()[-rng.randint(0, 4) :] if rng.random() < 0.7 else []
    after = context[start + len(text) :].split()[: rng.randint(1, 6)]
    return " ".join(before + [text] + after)


def _prediction(kind: str, question: dict, other: dict, rng: random.Random) -> str:
    golds = [text for text, _ in question["answers"]]
    gold = golds[0]
    words = gold.split()
    if kind == "exact":
        return gold
    if kind == "other_gold":
        return golds[-1]
    if kind == "truncated":
        if len(words) > 1:
            cut = rng.randint(1, len(words) - 1)
            return " ".join(words[cut:] if rng.random() < 0.5 else words[:cut])
        return gold[: max(1, len(gold) // 2)]
    if kind == "extended":
        return _extended(question, rng)
    if kind == "shuffled":
        words = _extended(question, rng).split()
        rng.shuffle(words)
        return " ".join(words)
    if kind == "empty":
        return rng.choice(["", "", " ", "\n"])
    if kind == "wrong":
        return other["answers"][0][0]
    if kind == "case_punct":
        text = rng.choice([gold.upper(), gold.lower(), gold.title()])
        return rng.choice(["The {}.", "{}!", '"{}"', "({})", "an {}", "{}, the end", "{} ..."]).format(text)
    if kind == "unicode":
        source, target = rng.choice(UNICODE_EDITS)
        return rng.choice(
            [
                gold.replace(source, target, 1) + " " + rng.choice(UNICODE_WORDS),
                rng.choice(UNICODE_WORDS) + " " + gold,
                gold.replace(" ", "\u00a0"),
            ]
        )
    if kind == "numbers":
        number = rng.choice(["1,000", "3.5", "1990s", "2-3", "10%", "$4.2 million", "1876", "0.5-1", "7 km"])
        return rng.choice(["{} {}", "{} in {}", "{}-{}"]).format(gold, number)
    if kind == "newline":
        return _extended(question, rng).replace(" ", "\n", rng.randint(1, 2)) + rng.choice(
            ["", "\n", "\n\nend"]
        )
    if kind == "entities":
        return rng.choice(
            ["{} &amp; co", "&quot;{}&quot;", "{} <skipped>", "{} &lt;b&gt;", "re-\n{}"]
        ).format(gold)
    if kind == "whitespace":
        return rng.choice(["  {}  ", "\t{}", "{} \n", " ".join(words) + "\t"]).format(gold)
    raise ValueError(kind)


@cache
def squad_pairs(n: int = 1300, seed: int = 0) -> tuple[tuple[str, str, tuple[str, ...], str], ...]:
    """Return `n` (pair id, prediction, gold answers, kind) tuples, the kinds in turn, from a fixed sample."""
    questions = squad_questions()
    rng = random.Random(seed)
    sample = rng.sample(questions, n)
    with_digits = [q for q in questions if any(ch.isdigit() for ch in q["answers"][0][0])]
    with_unicode = [q for q in questions if any(ord(ch) > 127 for text, _ in q["answers"] for ch in text)]
    pairs = []
    for i, question in enumerate(sample):
        kind = KINDS[i % len(KINDS)]
        if kind == "numbers" and i % 2:
            question = rng.choice(with_digits)
        if kind == "unicode" and i % 2:
            question = rng.choice(with_unicode)
            prediction = question["answers"][-1][0]
        else:
            prediction = _prediction(kind, question, rng.choice(questions), rng)
        pairs.append(
            (f"{i:05d}-{question['id']}", prediction, tuple(text for text, _ in question["answers"]), kind)
        )
    return tuple(pairs)
