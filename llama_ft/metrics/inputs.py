"""Read the files evaluate.py scores, checking them: an InputError names the file, the field and the fix.

- SQuAD dataset: the official layout {"data": [{"paragraphs": [{"qas": [{"id", "answers": [{"text"}]}]}]}]},
  as .json or as a .zip holding one .json; returns {question_id: [gold answer texts]}.
- predictions: the official {question_id: answer_text}, or the JSONL `python -m llama_ft.predict` writes (one
  {"id", "answer", ...} a line); no-answer probabilities: {question_id: number}.
- classification labels: a JSON list, a JSON object {id: label}, a TSV with a header and a `label` or
  `prediction` column (GLUE layout; an `index` column, when present, gives the ids), or llama_ft.predict's JSONL
  (one {"label", ...} a line; its "id" when every line has one, else the line's place: 0, 1, ...). Labels are
  ints or strings; strings of digits are read as ints, so "1" in a TSV equals 1 in JSON.
"""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile
from pathlib import Path

from llama_ft.files import jsonl_objects


class InputError(ValueError):
    """A file given to evaluate.py is missing, empty, malformed or inconsistent with another."""


def _read_text(path: Path) -> str:
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as archive:
                # macOS's archiver adds __MACOSX/._NAME resource forks beside each file: not data.
                members = [name for name in archive.namelist() if name.lower().endswith(".json")
                           and not name.startswith("__MACOSX/") and not Path(name).name.startswith("._")]
                if len(members) != 1:
                    raise InputError(
                        f"{path}: a zipped dataset must hold exactly one .json file, found {members}"
                    )
                data = archive.read(members[0])
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except zipfile.BadZipFile:
        raise InputError(f"{path}: not a valid zip file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    if not text.strip():
        raise InputError(f"{path}: the file is empty")
    return text


def _read_json(path: Path):
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None


def _field(container: dict, key: str, kind: type, where: str, path: Path):
    if not isinstance(container, dict) or key not in container:
        raise InputError(
            f"{path}: {where} has no `{key}` field; expected the official SQuAD layout "
            '{"data": [{"paragraphs": [{"qas": [{"id": ..., "answers": [{"text": ...}]}]}]}]}'
        )
    if not isinstance(container[key], kind):
        raise InputError(
            f"{path}: {where}.{key} is a {type(container[key]).__name__}, expected a {kind.__name__}"
        )
    return container[key]


def load_squad_dataset(path: str | Path) -> dict[str, list[str]]:
    """Return {question_id: [gold answer texts]} from an official SQuAD v1.1/v2.0 dataset (.json or .zip)."""
    path = Path(path)
    dataset = _read_json(path)
    references: dict[str, list[str]] = {}
    for a, article in enumerate(_field(dataset, "data", list, "the top level", path)):
        for p, paragraph in enumerate(_field(article, "paragraphs", list, f"data[{a}]", path)):
            for q, qa in enumerate(_field(paragraph, "qas", list, f"data[{a}].paragraphs[{p}]", path)):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                qid = _field(qa, "id", str, where, path)
                answers = _field(qa, "answers", list, where, path)
                texts = [
                    _field(answer, "text", str, f"{where}.answers[{i}]", path)
                    for i, answer in enumerate(answers)
                ]
                if qid in references:
                    raise InputError(
                        f"{path}: question id {qid!r} appears twice ({where}); ids must be unique"
                    )
                references[qid] = texts
    if not references:
        raise InputError(f"{path}: the dataset holds no questions")
    return references


def _jsonl_rows(path: Path, field: str) -> list[tuple[int, str | None, object]]:
    """(line, "id" or None, `field`) of each object of a JSONL file, as `python -m llama_ft.predict` writes them."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    hint = f'llama_ft.predict writes one {{"id": ..., "{field}": ...}} a line'
    rows, first_line = [], {}
    for line, obj in jsonl_objects(path, InputError, hint=hint):
        if field not in obj:
            raise InputError(f"{path}:{line}: no \"{field}\" field; {hint}.")
        if "id" in obj and not isinstance(obj["id"], (str, int)):
            raise InputError(f"{path}:{line}: \"id\" is {obj['id']!r}; ids are strings or ints.")
        key = str(obj["id"]) if "id" in obj else None
        if key is not None and first_line.setdefault(key, line) != line:
            raise InputError(f"{path}:{line}: id {key!r} again (first on line {first_line[key]}); each line needs "
                             "its own")
        rows.append((line, key, obj[field]))
    if not rows:
        raise InputError(f"{path}: the file is empty")
    return rows


def load_predictions(path: str | Path) -> dict[str, str]:
    """Return {question_id: answer_text} from an official SQuAD predictions file or llama_ft.predict's JSONL."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        rows = _jsonl_rows(path, "answer")
        for line, key, answer in rows:
            if key is None:
                raise InputError(f"{path}:{line}: no \"id\" field; SQuAD predictions are scored by question id: "
                                 "predict a file whose questions have ids (a SQuAD .json, or JSONL with \"id\").")
            if not isinstance(answer, str):
                raise InputError(f"{path}:{line}: the answer is a {type(answer).__name__} ({answer!r:.60}); "
                                 "every answer must be a string, '' for no answer")
        return {key: answer for _, key, answer in rows}
    predictions = _read_json(path)
    if isinstance(predictions, list):
        raise InputError(
            f"{path}: a JSON list; SQuAD predictions are one object {{question_id: answer_text}} "
            "(convert evaluate's [{'id', 'prediction_text'}] with {p['id']: p['prediction_text']})"
        )
    if not isinstance(predictions, dict):
        raise InputError(
            f"{path}: expected a JSON object {{question_id: answer_text}}, got a {type(predictions).__name__}"
        )
    for qid, answer in predictions.items():
        if not isinstance(answer, str):
            raise InputError(
                f"{path}: the answer for {qid!r} is a {type(answer).__name__} ({answer!r:.60}); "
                "every answer must be a string, '' for no answer"
            )
    return predictions


def load_na_probs(path: str | Path) -> dict[str, float]:
    """Return {question_id: probability of no answer} from the official --na-prob-file format."""
    path = Path(path)
    probs = _read_json(path)
    if not isinstance(probs, dict):
        raise InputError(
            f"{path}: expected a JSON object {{question_id: probability}}, got a {type(probs).__name__}"
        )
    for qid, prob in probs.items():
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not math.isfinite(prob):
            raise InputError(
                f"{path}: the no-answer probability for {qid!r} is {prob!r}; expected a finite number"
            )
    return {qid: float(prob) for qid, prob in probs.items()}


def _label(value, where: str, path: Path) -> int | str:
    if isinstance(value, str):
        value = value.strip()
        return int(value) if value.lstrip("-").isdigit() else value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InputError(
        f"{path}: the label {where} is {value!r}; labels must be class ids (ints) or strings "
        "(write the argmax class, not a score)"
    )


def load_labels(path: str | Path) -> dict[str, int | str]:
    """Return {id: label} from a JSON list (ids "0", "1", ...), a JSON object, a TSV (label/prediction) or
    llama_ft.predict's JSONL."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        rows = _jsonl_rows(path, "label")
        with_ids = [key is not None for _, key, _ in rows]
        if any(with_ids) and not all(with_ids):
            line = rows[with_ids.index(not with_ids[0])][0]
            raise InputError(f"{path}:{line}: some lines have an \"id\" and some do not; give every line one, "
                             "or none (the lines are then ids 0, 1, ... in order)")
        return {key if key is not None else str(i): _label(value, f"on line {line}", path)
                for i, (line, key, value) in enumerate(rows)}
    if path.suffix != ".tsv":
        labels = _read_json(path)
        if isinstance(labels, list):
            labels = {str(i): label for i, label in enumerate(labels)}
        elif not isinstance(labels, dict):
            raise InputError(
                f"{path}: expected a JSON list of labels or an object {{id: label}}, "
                f"got a {type(labels).__name__}"
            )
        return {str(key): _label(value, f"for {key!r}", path) for key, value in labels.items()}
    rows = list(csv.DictReader(io.StringIO(_read_text(path)), delimiter="\t", quoting=csv.QUOTE_NONE))
    columns = [c for c in ("prediction", "label") if rows and c in rows[0]]
    if not columns:
        header = _read_text(path).splitlines()[0]
        raise InputError(
            f"{path}: the header {header!r} has no `label` or `prediction` column "
            "(GLUE's test.tsv has no labels: score against a split that has them)"
        )
    ids = [row["index"] if "index" in row else str(i) for i, row in enumerate(rows)]
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: the `index` column repeats ids; each row needs its own")
    return {
        key: _label(row[columns[0]], f"on row {i + 2}", path) for i, (key, row) in enumerate(zip(ids, rows))
    }


def align_labels(
    gold: dict[str, int | str],
    predicted: dict[str, int | str],
    gold_path: str | Path,
    predicted_path: str | Path,
) -> tuple[list, list]:
    """Return (y_true, y_pred) in gold order; each gold id needs a prediction, each prediction a gold id."""
    missing = [key for key in gold if key not in predicted]
    unknown = [key for key in predicted if key not in gold]
    if missing or unknown:
        raise InputError(
            f"{predicted_path} does not match {gold_path}: {len(missing)} gold ids have no prediction"
            f"{f' (first: {missing[0]!r})' if missing else ''}, {len(unknown)} predicted ids are not in the "
            f"gold file{f' (first: {unknown[0]!r})' if unknown else ''}; predict exactly the gold examples, "
            "with the same ids"
        )
    return list(gold.values()), [predicted[key] for key in gold]
