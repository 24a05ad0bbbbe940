"""GLUE SST-2: loading (TSV, JSONL, parquet, the Hub), the study's stratified 80:20 split, and tokenisation."""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llama_ft.files import jsonl_objects, utf8_lines

LABELS = ["negative", "positive"]
HUB_REPO = "nyu-mll/glue"


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, the row or field, and the fix."""


@dataclass(frozen=True)
class Example:
    sentence: str
    label: int


def _check(rows: list[Example], where: str) -> list[Example]:
    if not rows:
        raise DataError(f"{where}: no labelled rows.")
    return rows


def check_classes(rows: list[Example], where: str, names: Sequence[str] = LABELS) -> None:
    """Warn when the training rows hold a single label (`names[label]` names it): a classifier trained on them
    learns no boundary."""
    labels = {r.label for r in rows}
    if len(labels) == 1:
        warnings.warn(f"{where}: every training row is labelled {names[labels.pop()]}; the model cannot learn "
                      "to tell the classes apart. Check the file, or --max-train when it is small.", stacklevel=2)


def _row(sentence, label, where: str, line: int) -> Example:
    if not isinstance(sentence, str) or not sentence.strip():
        raise DataError(f"{where}, row {line}: empty sentence. Remove the row or fill it in.")
    try:
        y = int(label)
    except (TypeError, ValueError):
        raise DataError(f"{where}, row {line}: label {label!r} is not 0 or 1.") from None
    if y not in (0, 1) or str(label).strip() not in ("0", "1"):
        raise DataError(f"{where}, row {line}: label {label!r} is outside {{0, 1}} "
                        "(SST-2 labels are 0 = negative, 1 = positive).")
    return Example(sentence, y)  # verbatim: GLUE's sentences end in a space, and the study tokenised it


def read_tsv(path: str | Path) -> list[Example]:
    """A GLUE-format TSV with a header naming `sentence` and `label` columns."""
    path = Path(path)
    lines = utf8_lines(path, DataError)
    first = next(lines, (1, ""))[1]
    header = first.rstrip("\r\n").split("\t")
    if len(header) < 2 or "sentence" not in header:
        raise DataError(f"{path}: not a GLUE SST-2 TSV; the first line must be a tab-separated header "
                        f"with `sentence` and `label` columns, got {header[:4]!r}.")
    if "label" not in header:
        raise DataError(f"{path}: has no `label` column (GLUE's test.tsv is unlabelled): its rows can be predicted "
                        "(predict_file=FILE) but not trained on; use train.tsv / dev.tsv or a labelled file.")
    si, li = header.index("sentence"), header.index("label")
    rows = []
    for line, text in lines:
        text = text.rstrip("\r\n")
        if not text:
            continue  # a blank line (e.g. a trailing one)
        fields = text.split("\t")  # GLUE's TSVs are unquoted: a quote is part of the sentence
        if len(fields) != len(header):
            raise DataError(f"{path}, row {line}: {len(fields)} tab-separated fields, the header has "
                            f"{len(header)}. Is this a TSV file?")
        rows.append(_row(fields[si], fields[li], str(path), line))
    return _check(rows, str(path))


def read_jsonl(path: str | Path) -> list[Example]:
    """One JSON object a line with `sentence` and `label`."""
    path = Path(path)
    rows = []
    for line, d in jsonl_objects(path, DataError):
        if "sentence" not in d or "label" not in d:
            raise DataError(f"{path}, line {line}: needs `sentence` and `label` fields.")
        rows.append(_row(d["sentence"], d["label"], str(path), line))
    return _check(rows, str(path))


def read_parquet(path: str | Path) -> list[Example]:
    """The Hugging Face datasets layout (`sentence`, `label` columns)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow; run `pip install pyarrow`.") from None
    try:
        table = pq.read_table(path).to_pydict()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable parquet file ({e}); export it again.") from None
    if "sentence" not in table or "label" not in table:
        raise DataError(f"{path}: needs `sentence` and `label` columns, has {sorted(table)}.")
    rows = [_row(s, y, str(path), i + 1) for i, (s, y) in enumerate(zip(table["sentence"], table["label"]))]
    return _check(rows, str(path))


def read_file(path: str | Path) -> list[Example]:
    """Any labelled SST-2 file, by extension: .tsv, .jsonl/.json, .parquet."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file.")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path)
    if suffix == ".parquet":
        return read_parquet(path)
    return read_tsv(path)


def load_sst2(source: str | Path | None = None) -> dict[str, list[Example]]:
    """Labelled splits {"train": ..., "validation": ...?} from a file, a GLUE folder, or the Hub (None)."""
    if source is None:
        return _from_hub()
    p = Path(source)
    if p.is_file():
        return {"train": read_file(p)}
    if p.is_dir():
        out = {}
        for split, names in (("train", ("train.tsv", "train.jsonl", "train.parquet")),
                             ("validation", ("dev.tsv", "validation.tsv", "validation.jsonl",
                                             "validation.parquet"))):
            for n in names:
                if (p / n).is_file():
                    out[split] = read_file(p / n)
                    break
        if "train" not in out:
            raise DataError(f"{p}: no train.tsv / train.jsonl / train.parquet in this folder.")
        return out
    raise DataError(f"--data {source}: no such file or folder.")


def _from_hub() -> dict[str, list[Example]]:
    from huggingface_hub import HfApi, hf_hub_download
    try:
        files = [f for f in HfApi().list_repo_files(HUB_REPO, repo_type="dataset") if f.startswith("sst2/")]
        out = {}
        for split in ("train", "validation"):
            parts = [f for f in files if f.split("/")[-1].startswith(split) and f.endswith(".parquet")]
            out[split] = [r for f in parts for r in read_parquet(hf_hub_download(HUB_REPO, f, repo_type="dataset"))]
        return out
    except DataError:
        raise
    except Exception as e:  # network, auth: say what to do instead
        raise DataError(f"could not fetch SST-2 from the Hugging Face Hub ({HUB_REPO}): {e}. "
                        "Pass --data with a local GLUE SST-2 folder or file instead.") from None


def _approximate_mode(counts: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """Per-class draws adding up to n_draws: floor of the proportional share, then one more for the classes
    with the largest remainders (ties drawn with `rng`, which is consumed whenever any is added)."""
    exact = counts * n_draws / counts.sum()
    out = np.floor(exact)
    need = int(n_draws - out.sum())
    if need > 0:
        remainder = exact - out
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            take = min(len(tied), need)
            out[rng.choice(tied, size=take, replace=False)] += 1
            need -= take
            if need == 0:
                break
    return out.astype(np.int64)


def stratified_split(rows: list[Example], test_fraction: float = 0.2, seed: int = 1,
                     n_test: int | None = None, where: str = "") -> tuple[list[Example], list[Example]]:
    """The study's split: the rows `datasets.Dataset.train_test_split(test_size=test_fraction,
    stratify_by_column="label", seed=seed)` gives, in the same order (tests/test_sst2_data.py checks it
    against `datasets`). ceil(fraction * n) test rows; per label, train and test counts by largest
    remainder, one permutation of the label's rows (train first, then test); then each side permuted;
    all draws from one `np.random.default_rng(seed)`. `where` (the file) starts the message of a DataError."""
    rng = np.random.default_rng(seed)
    labels = np.array([r.label for r in rows])
    if n_test is None:
        n_test = math.ceil(round(test_fraction * len(rows), 6))
    n_train = len(rows) - n_test
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2 or min(n_train, n_test) < len(classes):
        per_label = dict(zip(classes.tolist(), counts.tolist()))
        raise DataError(f"{where + ': ' if where else ''}cannot split {len(rows):,} rows ({per_label} per label) "
                        f"into {n_train:,} train / {n_test:,} test with every label on both sides; "
                        "use more rows or a larger subset.")
    # datasets also allocates the test side by approximate mode, over what train left: that is exactly the
    # remainder (it sums to n_test), so it draws nothing and the test rows are the rest of each label.
    per_train = _approximate_mode(counts, n_train, rng)
    train_idx, test_idx = [], []
    for c, count, k_train in zip(classes, counts, per_train):
        idx = np.flatnonzero(labels == c)[rng.permutation(count)]
        train_idx.extend(idx[:k_train])
        test_idx.extend(idx[k_train:])
    train_idx, test_idx = rng.permutation(train_idx), rng.permutation(test_idx)
    return [rows[i] for i in train_idx], [rows[i] for i in test_idx]


def subsample(rows: list[Example], n: int | None, seed: int = 1, where: str = "") -> list[Example]:
    """A stratified random subset of `n` rows (all of them when n is None or larger)."""
    if n is None or n >= len(rows):
        return rows
    return stratified_split(rows, seed=seed, n_test=n, where=where)[1]


def hold_out(rows: list[Example], at_most: int = 1000, seed: int = 1, where: str = ""
             ) -> tuple[list[Example], list[Example]]:
    """(kept, held out): a stratified tenth of `rows` (at least 2, at most `at_most`) held out of training
    to evaluate on while training."""
    return stratified_split(rows, seed=seed, n_test=min(at_most, max(2, len(rows) // 10)), where=where)


def encode(rows: list[Example], tokenizer, max_length: int = 128) -> list[dict]:
    """Engine-ready examples {"input_ids", "label"}, truncated to `max_length` tokens (BOS as the model wants)."""
    out = []
    for r in rows:
        ids = tokenizer.encode(r.sentence)
        out.append({"input_ids": ids[:max_length], "label": r.label})
    return out
