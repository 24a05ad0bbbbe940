"""SQuAD v1.1 / v2.0: official JSON (zipped or not) or the Hub parquet, every answer checked against its
context, and the study's split (the first N + 1,000 questions, 1,000 of them drawn for test with seed 1)."""
from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HUB_REPOS = {"1.1": "rajpurkar/squad", "2.0": "rajpurkar/squad_v2"}
HUB_SPLITS = {"train": "train", "validation": "validation", "dev": "validation"}
# A stated answer_start off by at most this many characters is repaired to the nearest occurrence,
# when exactly one occurrence is that near (SQuAD has answers shifted by a space or a quote).
MAX_SHIFT = 16


class SquadDataError(ValueError):
    """SQuAD input that cannot be used; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class Answer:
    """A gold answer whose span is verified: `context[start:start + len(text)] == text`."""
    text: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@dataclass
class SquadExample:
    """One question. `answers`: the gold answers with a verified span (training labels); `gold_texts`: every
    gold answer text as given (scoring, where the position does not matter); v2 unanswerable: both empty."""
    qid: str
    title: str
    context: str
    question: str
    answers: list[Answer]
    gold_texts: list[str]
    is_impossible: bool = False

    @property
    def trainable(self) -> bool:
        """True when the question can be labelled: unanswerable, or with at least one verified span."""
        return self.is_impossible or bool(self.answers)


@dataclass
class SquadCounts:
    """What loading found and did; printed in the run summary and written to metrics.json."""
    questions: int = 0
    answers: int = 0
    answers_repaired: int = 0          # answer_start wrong, the text found once (or once near it): moved
    answers_skipped: int = 0           # text absent or ambiguous: not a training label (still a gold text)
    answers_stripped: int = 0          # leading/trailing whitespace removed from the answer text
    questions_without_span: int = 0    # answerable, but no answer could be placed: scored, never trained on
    skipped_empty_context: int = 0     # dropped: nothing to answer from
    skipped_empty_question: int = 0
    impossible: int = 0                # v2 unanswerable questions
    impossible_inferred: int = 0       # v2 rows without `is_impossible`: inferred from an empty answer list
    duplicate_ids: int = 0             # later duplicates renamed `<id>#2`, ...

    def as_dict(self) -> dict:
        return dict(vars(self))

    def summary(self) -> str:
        """One line for the run log."""
        return (f"{self.questions:,} questions, {self.answers:,} answers: {self.answers_repaired} repaired, "
                f"{self.answers_skipped} skipped, {self.questions_without_span} questions without a usable span; "
                f"{self.skipped_empty_context} skipped for an empty context, {self.skipped_empty_question} for an "
                f"empty question; {self.impossible} unanswerable ({self.impossible_inferred} inferred)")


@dataclass
class SquadData:
    """The loaded questions of one file or Hub split, in source order, with what loading did."""
    examples: list[SquadExample]
    version: str
    source: str
    counts: SquadCounts = field(default_factory=SquadCounts)


# ------------------------------------------------------------------ answer checking
def place_answer(context: str, text: str, start: int | None) -> tuple[int | None, str]:
    """(verified start, how): `ok`, `repaired` (moved to the only / the only nearby occurrence) or `skipped`
    (start None: the text is not in the context, or occurs several times with none singled out)."""
    if isinstance(start, int) and 0 <= start and context[start:start + len(text)] == text:
        return start, "ok"
    hits, i = [], context.find(text)
    while i != -1:
        hits.append(i)
        i = context.find(text, i + 1)
    if len(hits) == 1:
        return hits[0], "repaired"
    if hits and isinstance(start, int):
        near = [h for h in hits if abs(h - start) <= MAX_SHIFT]
        if len(near) == 1:
            return near[0], "repaired"
    return None, "skipped"


def _answer(context: str, text, start, counts: SquadCounts) -> Answer | None:
    if not isinstance(text, str):
        counts.answers_skipped += 1
        return None
    stripped = text.strip()
    if not stripped:
        counts.answers_skipped += 1
        return None
    if stripped != text:
        counts.answers_stripped += 1
        if isinstance(start, int):
            start += len(text) - len(text.lstrip())
    try:
        start = int(start) if start is not None else None
    except (TypeError, ValueError):
        start = None
    pos, how = place_answer(context, stripped, start)
    if how == "repaired":
        counts.answers_repaired += 1
    elif how == "skipped":
        counts.answers_skipped += 1
        return None
    return Answer(stripped, pos)


def build_example(record: dict, counts: SquadCounts, seen: dict[str, int]) -> SquadExample | None:
    """A SquadExample from a flat record {id, title, context, question, answers: [(text, start)],
    is_impossible (None when the source has no such field)}; None (counted) when the question is unusable."""
    context, question = record.get("context") or "", record.get("question") or ""
    if not isinstance(context, str) or not context.strip():
        counts.skipped_empty_context += 1
        return None
    if not isinstance(question, str) or not question.strip():
        counts.skipped_empty_question += 1
        return None
    qid = str(record.get("id") if record.get("id") is not None else f"q{counts.questions}")
    if qid in seen:
        seen[qid] += 1
        counts.duplicate_ids += 1
        qid = f"{qid}#{seen[qid]}"
    else:
        seen[qid] = 1
    raw = list(record.get("answers") or [])
    impossible = record.get("is_impossible")
    if impossible is None and record.get("version", "1.1").startswith("2"):
        impossible = not raw
        counts.impossible_inferred += impossible
    impossible = bool(impossible)
    counts.questions += 1
    answers, texts = [], []
    if not impossible:
        for text, start in raw:
            counts.answers += 1
            if isinstance(text, str) and text.strip():
                texts.append(text.strip())
            a = _answer(context, text, start, counts)
            if a is not None and a not in answers:
                answers.append(a)
        if not answers:
            counts.questions_without_span += 1
    else:
        counts.impossible += 1
    return SquadExample(qid, str(record.get("title") or ""), context, question.strip(), answers, texts, impossible)


# ------------------------------------------------------------------ official JSON
def read_json(path: str | Path) -> dict:
    """The parsed official-format JSON of `path` (a .json file, or a .zip holding one .json member)."""
    path = Path(path)
    if not path.is_file():
        raise SquadDataError(f"{path}: no such file; give an official SQuAD JSON (train-v1.1.json, "
                             "dev-v2.0.json, ...), zipped or not, or leave --data out to use the Hub.")
    where = str(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                members = [n for n in z.namelist() if n.endswith(".json") and not n.startswith("__MACOSX")]
                if len(members) != 1:
                    raise SquadDataError(f"{path}: a zip must hold exactly one .json member, found "
                                         f"{members or z.namelist()[:5]}; unzip it and pass the JSON file.")
                where = f"{path}:{members[0]}"
                raw = z.read(members[0])
        else:
            raw = path.read_bytes()
        doc = json.loads(raw.decode("utf-8-sig"))
    except json.JSONDecodeError as e:
        raise SquadDataError(f"{where}: malformed JSON at line {e.lineno}, column {e.colno} ({e.msg}); "
                             "the file is truncated or not SQuAD JSON: download it again.") from None
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise SquadDataError(f"{where}, line {line}: byte {raw[e.start]:#04x} is not UTF-8 ({e.reason} at byte "
                             f"{e.start}); SQuAD JSON is UTF-8: download it again or save it as UTF-8.") from None
    except RecursionError:
        raise SquadDataError(f"{where}: JSON nested too deeply to be SQuAD; download it again.") from None
    except zipfile.BadZipFile as e:
        raise SquadDataError(f"{path}: damaged zip ({e}); download it again.") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise SquadDataError(f"{where}: not the official SQuAD layout: the top level must be an object with a "
                             "`data` list of articles ({'data': [{'title', 'paragraphs': [...]}], 'version'}).")
    return doc


def json_records(doc: dict, where: str) -> Iterator[dict]:
    """Flat question records of an official-format document, in file order."""
    version = str(doc.get("version", "1.1")).lstrip("v")
    v2 = version.startswith("2")
    for a, article in enumerate(doc["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise SquadDataError(f"{where}: data[{a}] has no `paragraphs` list; not SQuAD JSON.")
        for p, para in enumerate(paragraphs):
            if not isinstance(para, dict) or not isinstance(para.get("qas"), list):
                raise SquadDataError(f"{where}: data[{a}].paragraphs[{p}] has no `qas` list; not SQuAD JSON.")
            for qa in para["qas"]:
                if not isinstance(qa, dict):
                    raise SquadDataError(f"{where}: data[{a}].paragraphs[{p}].qas holds a non-object; "
                                         "not SQuAD JSON.")
                given = qa.get("answers")
                answers = [(x.get("text"), x.get("answer_start")) for x in given if isinstance(x, dict)] \
                    if isinstance(given, list) else []
                impossible = qa.get("is_impossible")
                yield {"id": qa.get("id"), "title": article.get("title"), "context": para.get("context"),
                       "question": qa.get("question"), "answers": answers,
                       "is_impossible": impossible if (impossible is not None or not v2) else None,
                       "version": "2.0" if v2 else "1.1"}


# ------------------------------------------------------------------ Hub parquet
def hub_records(repo: str, split: str, revision: str | None = None, token: str | None = None) -> Iterator[dict]:
    """Flat question records of a Hub dataset in the `rajpurkar/squad(_v2)` parquet layout."""
    name = HUB_SPLITS.get(split, split)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SquadDataError(f"reading {repo} from the Hub needs pyarrow for its parquet files: "
                             "pip install pyarrow (or pass --data with an official SQuAD JSON file).") from None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    try:
        folder = Path(snapshot_download(repo, repo_type="dataset", revision=revision, token=token,
                                        allow_patterns=[f"*{name}-*.parquet"]))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        raise SquadDataError(f"cannot fetch the dataset {repo} from the Hugging Face Hub ({type(e).__name__}: {e}); "
                             "check the network / HF_TOKEN, or pass --data with a local SQuAD JSON file.") from None
    files = sorted(folder.rglob(f"{name}-*.parquet"))
    if not files:
        raise SquadDataError(f"{repo} has no `{name}-*.parquet` file; use split train or validation.")
    v2 = "v2" in repo
    for path in files:
        for row in pq.read_table(path).to_pylist():
            ans = row.get("answers") or {}
            answers = list(zip(ans.get("text") or [], ans.get("answer_start") or []))
            yield {"id": row.get("id"), "title": row.get("title"), "context": row.get("context"),
                   "question": row.get("question"), "answers": answers,
                   "is_impossible": row.get("is_impossible"), "version": "2.0" if v2 else "1.1"}


# ------------------------------------------------------------------ entry points
def load_squad(source: str | Path | None = None, split: str = "train", version: str = "1.1",
               revision: str | None = None, token: str | None = None) -> SquadData:
    """SQuAD questions from a local official JSON (zipped or not), a Hub dataset id, or (None) the Hub's
    `rajpurkar/squad` / `rajpurkar/squad_v2` by `version`; every answer checked against its context."""
    local = source is not None and (Path(str(source)).exists() or str(source).endswith((".json", ".zip")))
    if not local:
        repo = str(source) if source is not None else HUB_REPOS.get(version)
        if repo is None:
            raise SquadDataError(f"SQuAD version {version!r} is not one of {', '.join(HUB_REPOS)}.")
        records, where = hub_records(repo, split, revision, token), f"hf://datasets/{repo} ({split})"
        version = "2.0" if "v2" in repo else "1.1"
    else:
        doc = read_json(source)
        where = str(source)
        version = "2.0" if str(doc.get("version", "1.1")).lstrip("v").startswith("2") else "1.1"
        records = json_records(doc, where)
    counts, seen, examples = SquadCounts(), {}, []
    for rec in records:
        ex = build_example(rec, counts, seen)
        if ex is not None:
            examples.append(ex)
    if not examples:
        raise SquadDataError(f"{where}: no usable question (every one had an empty context or question).")
    return SquadData(examples, version, where, counts)


def study_split(examples: list[SquadExample], n_train: int, n_test: int = 1000, seed: int = 1,
                where: str = "the data") -> tuple[list[SquadExample], list[SquadExample]]:
    """The study's protocol: the first n_train + n_test questions in source order, split as
    `datasets.Dataset.train_test_split(test_size=n_test, seed=seed)` does (one numpy permutation of the
    pool; its first n_test indices are the test set, the rest the train set, each in permutation order).
    `where` (the file) names the data in the message of a SquadDataError."""
    pool = n_train + n_test
    if n_train < 1 or n_test < 1:
        raise SquadDataError(f"--n {n_train} with {n_test} test questions: both must be positive.")
    if len(examples) < pool:
        raise SquadDataError(f"{where} has {len(examples):,} questions, fewer than --n {n_train:,} + {n_test:,} "
                             f"test; lower --n to at most {len(examples) - n_test:,}.")
    order = np.random.default_rng(seed).permutation(pool)
    return [examples[i] for i in order[n_test:]], [examples[i] for i in order[:n_test]]


def hold_out(examples: list[SquadExample], at_most: int = 1000
              ) -> tuple[list[SquadExample], list[SquadExample]]:
    """(kept, held out): the last tenth of `examples` (at least 1, at most `at_most`) held out of training,
    to calibrate SQuAD v2's no-answer threshold or to evaluate during training."""
    k = min(at_most, max(1, len(examples) // 10))
    return examples[:-k], examples[-k:]


def check_trainable(examples: list[SquadExample], where: str) -> None:
    """A SquadDataError when no training question has a usable answer span (nothing to learn from)."""
    if examples and not any(ex.trainable for ex in examples):
        raise SquadDataError(f"{where}: none of the {len(examples):,} training questions has a usable answer span "
                             "(every answer's text is missing from its context, or its answer_start is wrong and "
                             "the text occurs several times); check the file's `answers` or use another file.")


def references(examples: list[SquadExample]) -> dict[str, list[str]]:
    """{qid: gold texts} for the metrics (an empty list for a v2 unanswerable question)."""
    return {ex.qid: list(ex.gold_texts) for ex in examples}
