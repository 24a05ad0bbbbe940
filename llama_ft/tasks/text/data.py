"""Text classification on your own data: CSV, TSV, JSONL or parquet files, or a Hub dataset; any column names;
one text or a text pair per row; any number of labels; and the tokenisation of pairs.

Labels become class ids in a fixed order: integers (or strings of digits) in numeric order, anything else as
strings in sorted order; a Hub dataset's `ClassLabel` column keeps its own ids and names.
"""
from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llama_ft.files import jsonl_objects, utf8_lines

READERS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
_INTEGER = re.compile(r"[+-]?[0-9]+")


class TextDataError(ValueError):
    """Input data that cannot be used; the message names the file, the row or column, and the fix."""


@dataclass(frozen=True)
class Columns:
    """Which columns hold the text, the optional second text of a pair, and the label."""
    text: str = "sentence"
    text_pair: str | None = None
    label: str = "label"


@dataclass(frozen=True)
class TextExample:
    """One row: `label` is its class id (None in an unlabelled file); `index` is the row's id for predictions."""
    text: str
    label: int | None
    text_pair: str | None = None
    index: str = ""


@dataclass(frozen=True)
class RawRow:
    """A row as read, before its label is mapped to a class id."""
    text: str
    text_pair: str | None
    label: object
    index: str
    line: int


@dataclass(frozen=True)
class LabelSet:
    """The classes in id order: `values` as the data writes them, `names` for config.json's id2label."""
    values: tuple
    names: tuple[str, ...]

    @property
    def numeric(self) -> bool:
        return all(isinstance(v, int) for v in self.values)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    def key(self, value):
        """`value` as this set compares labels: an int for numeric sets, else a string."""
        k = label_key(value)
        return k if self.numeric or not isinstance(k, int) else str(k)

    def id_of(self, value, where: str) -> int:
        k = self.key(value)
        if k not in self.values:
            raise TextDataError(f"{where}: label {value!r} is not one of the training labels "
                                f"{', '.join(map(str, self.values))}; fix the row or add the label to the "
                                "training data.")
        return self.values.index(k)


def label_key(value):
    """An integer label (int, integral float, or a string of digits) as an int; any other string stripped."""
    if isinstance(value, bool) or value is None:
        raise TypeError
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip():
        s = value.strip()
        return int(s) if _INTEGER.fullmatch(s) else s
    raise TypeError


def label_set(rows: Iterable[RawRow], where: str, names: dict | None = None) -> LabelSet:
    """The classes of the training rows: integers in numeric order, otherwise strings sorted. `names`
    ({value: name}) names integer classes (default: the integer itself)."""
    keys = {label_key(r.label) for r in rows}
    if all(isinstance(k, int) for k in keys):
        values = tuple(sorted(keys | set(names or ())))  # a named class keeps its id though no row has it
        out = LabelSet(values, tuple(str((names or {}).get(v, v)) for v in values))
    else:
        values = tuple(sorted(str(k) for k in keys))
        out = LabelSet(values, values)
    if len(values) < 2:
        raise TextDataError(f"{where}: every training row has the label {next(iter(values), None)!r}; a classifier "
                            "needs at least two labels. Check the label column, or use more rows.")
    return out


def to_examples(rows: list[RawRow], labels: LabelSet | None, where: str) -> list[TextExample]:
    """TextExamples with class ids from `labels` (None: unlabelled rows, for prediction)."""
    return [TextExample(r.text, None if labels is None else labels.id_of(r.label, f"{where}, row {r.line}"),
                        r.text_pair, r.index) for r in rows]


# ------------------------------------------------------------------ files
def _tsv(path: Path) -> Iterator[tuple[int, dict]]:
    # GLUE's TSVs are unquoted (a quote is part of the sentence) and their sentences keep a trailing space.
    lines = utf8_lines(path, TextDataError)
    header = next(lines, (1, ""))[1].rstrip("\r\n").split("\t")
    for line, text in lines:
        text = text.rstrip("\r\n")
        if not text:
            continue
        fields = text.split("\t")
        if len(fields) != len(header):
            raise TextDataError(f"{path}, row {line}: {len(fields)} tab-separated fields, the header has "
                                f"{len(header)}. Is this a TSV file?")
        yield line, dict(zip(header, fields))


def _csv(path: Path) -> Iterator[tuple[int, dict]]:
    text = "".join(t for _, t in utf8_lines(path, TextDataError))
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = next(reader, [])
        for fields in reader:
            if not fields:
                continue
            if len(fields) != len(header):
                raise TextDataError(f"{path}, row {reader.line_num}: {len(fields)} comma-separated fields, the "
                                    f"header has {len(header)}; quote fields that hold a comma.")
            yield reader.line_num, dict(zip(header, fields))
    except csv.Error as e:
        raise TextDataError(f"{path}, row {reader.line_num}: not CSV ({e}).") from None


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    return jsonl_objects(path, TextDataError)


def _parquet(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TextDataError(f"{path}: reading parquet needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise TextDataError(f"{path}: not a readable parquet file ({e}); export it again.") from None
    yield from enumerate(table.to_pylist(), start=1)


def read_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(row number, {column: value}) of a .csv, .tsv, .jsonl (or .json, one object a line) or .parquet file."""
    path = Path(path)
    if not path.is_file():
        raise TextDataError(f"{path}: no such file.")
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise TextDataError(f"{path}: unknown file type {suffix or '(none)'}; use {', '.join(READERS)}.")
    return {".csv": _csv, ".tsv": _tsv, ".jsonl": _jsonl, ".json": _jsonl, ".parquet": _parquet}[suffix](path)


def raw_rows(records: Iterable[tuple[int, dict]], columns: Columns, where: str, labelled: bool = True
             ) -> list[RawRow]:
    """The rows of `records` in `columns`; `labelled` rows must have a label, others may have none. An `index`
    column (GLUE's test.tsv) names each row; otherwise its position from 0 does."""
    rows = []
    for pos, (line, rec) in enumerate(records):
        if pos == 0:
            _check_columns(rec, columns, where, labelled)
        text = rec.get(columns.text)
        pair = rec.get(columns.text_pair) if columns.text_pair else None
        for name, value in ((columns.text, text), (columns.text_pair, pair)):
            if name and (not isinstance(value, str) or not value.strip()):
                raise TextDataError(f"{where}, row {line}: column `{name}` is empty or not text ({value!r}). "
                                    "Remove the row or fill it in.")
        label = rec.get(columns.label)
        if labelled:
            try:
                label_key(label)
            except TypeError:
                raise TextDataError(f"{where}, row {line}: label {label!r} in column `{columns.label}` is neither "
                                    "an integer nor a name. Fix the row or remove it.") from None
        index = rec.get("index", rec.get("idx", pos))
        rows.append(RawRow(text, pair, label if labelled else None, str(index), line))
    if not rows:
        raise TextDataError(f"{where}: no rows.")
    return rows


def _check_columns(rec: dict, columns: Columns, where: str, labelled: bool) -> None:
    have = list(rec)
    for name, arg in ((columns.text, "text_column"), (columns.text_pair, "text_pair_column")):
        if name and name not in rec:
            raise TextDataError(f"{where}: no column `{name}` (its columns: {have[:8]}); name the text column "
                                f"({arg}=NAME).")
    if labelled and columns.label not in rec:
        raise TextDataError(f"{where}: no `{columns.label}` column (its columns: {have[:8]}), so its rows can be "
                            "predicted but not trained or scored on (GLUE's test.tsv is unlabelled): name the label "
                            "column (label_column=NAME) or pass the file for prediction (predict_file=FILE).")


def read_rows(path: str | Path, columns: Columns, labelled: bool = True) -> list[RawRow]:
    """The rows of one file (see `read_records` for the formats)."""
    return raw_rows(read_records(path), columns, str(path), labelled)


SPLIT_FILES = {"train": ("train",), "validation": ("dev", "validation")}


def load_text(source: str | Path, columns: Columns, config: str | None = None
              ) -> tuple[dict[str, list[RawRow]], dict | None]:
    """({split: rows}, {class id: name} or None) from a file (split "train"), a folder holding train.* (and
    dev.* or validation.*) in any of the file types, or a Hub dataset id (`config` names its configuration)."""
    p = Path(source)
    if p.is_file():
        return {"train": read_rows(p, columns)}, None
    if p.is_dir():
        out = {}
        for split, stems in SPLIT_FILES.items():
            found = [p / f"{stem}{ext}" for stem in stems for ext in READERS if (p / f"{stem}{ext}").is_file()]
            if found:
                out[split] = read_rows(found[0], columns)
        if "train" not in out:
            raise TextDataError(f"{p}: no train file ({', '.join('train' + e for e in READERS)}) in this folder.")
        return out, None
    if p.suffix.lower() in READERS or str(source).startswith((".", "/", "~")):
        raise TextDataError(f"{source}: no such file or folder.")
    return hub_rows(str(source), config, columns)


# ------------------------------------------------------------------ the Hub
def hub_rows(dataset: str, config: str | None, columns: Columns) -> tuple[dict[str, list[RawRow]], dict | None]:
    """({split: rows}, {class id: name} of a `ClassLabel` label column or None) of a Hub dataset, through
    `datasets.load_dataset(dataset, config)`."""
    try:
        import datasets
    except ImportError:
        raise TextDataError(f"reading the Hub dataset {dataset} needs the datasets library: pip install datasets "
                            "(or pass a local .csv / .tsv / .jsonl / .parquet file).") from None
    try:
        loaded = datasets.load_dataset(dataset, config)
    except (ValueError, FileNotFoundError, ConnectionError, OSError) as e:
        raise TextDataError(f"cannot load the Hub dataset {dataset}" + (f" ({config})" if config else "")
                            + f": {type(e).__name__}: {e}. Check the id and its config (dataset_config=NAME), the "
                            "network and HF_TOKEN, or pass a local file.") from None
    names = None
    out = {}
    for split, ds in loaded.items():
        feature = ds.features.get(columns.label)
        if getattr(feature, "names", None):
            names = dict(enumerate(feature.names))
        labelled = columns.label in ds.column_names and any(v is not None and v != -1 for v in ds[columns.label])
        records = ((i + 1, rec) for i, rec in enumerate(ds))
        out[split] = raw_rows(records, columns, f"hf://datasets/{dataset} ({split})", labelled)
    return out, names


# ------------------------------------------------------------------ tokenisation
def pair_ids(tokenizer, text: str, text_pair: str, max_length: int) -> list[int]:
    """Token ids of a text pair, at most `max_length`: the tokenizer's own pair template when it has one that
    marks the pair (Llama 3: BOS A BOS B), else A and B joined by its EOS token (SmolLM2's template adds
    nothing, which would run the two texts together). The longer text loses tokens from its end first."""
    backend = tokenizer.backend
    a = backend.encode(text, add_special_tokens=False)
    b = backend.encode(text_pair, add_special_tokens=False)
    templated = backend.num_special_tokens_to_add(True) > backend.num_special_tokens_to_add(False)
    extra = backend.num_special_tokens_to_add(True) if templated else backend.num_special_tokens_to_add(False) + 1
    room_a, room_b = _longest_first(len(a.ids), len(b.ids), max(max_length - extra, 0))
    a.truncate(room_a)
    b.truncate(room_b)
    if templated:
        return backend.post_process(a, b, add_special_tokens=True).ids
    return backend.post_process(a, None, add_special_tokens=True).ids + [tokenizer.eos_token_id] + b.ids


def _longest_first(n_a: int, n_b: int, room: int) -> tuple[int, int]:
    """Token counts kept of two texts within `room`: tokens come off the longer one until both are as long,
    then off both alike (transformers' `longest_first`)."""
    if n_a + n_b <= room:
        return n_a, n_b
    short = min(n_a, n_b, room // 2)
    keep_a = short if n_a <= n_b else room - short
    return keep_a, room - keep_a


def encode(rows: list[TextExample], tokenizer, max_length: int = 128) -> list[dict]:
    """Engine-ready examples {"input_ids", "label"?}; a single text is cut to `max_length` tokens as SST-2's
    sentences are, a pair by `pair_ids`."""
    out = []
    for r in rows:
        ids = (pair_ids(tokenizer, r.text, r.text_pair, max_length) if r.text_pair is not None
               else tokenizer.encode(r.text)[:max_length])
        out.append({"input_ids": ids} if r.label is None else {"input_ids": ids, "label": r.label})
    return out
