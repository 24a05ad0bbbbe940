"""Predict a JSONL file, or an official SQuAD file, with a fine-tuned model.

    python -m llama_ft.predict MODEL --task text-classification --input IN.jsonl --output OUT.jsonl
    python -m llama_ft.predict MODEL --task question-answering --input IN.jsonl --output OUT.jsonl
    python -m llama_ft.predict MODEL --task question-answering --input dev-v1.1.json --output OUT.jsonl

MODEL is an exported model folder or a recipe's run folder (runs/NAME, holding model/). Input: one JSON object
a line, {"text": ...} for text-classification, {"question": ..., "context": ...} for question-answering; blank
lines are skipped. For question-answering, a .json or .zip input is read as the official SQuAD layout (every
question with its id, in file order; answers, when present, are not read). Output: one JSON object a line, in
input order: {"label", "score"} or {"answer", "score", "start", "end"} (character offsets into the context),
with the input's "id" first when it has one. `python evaluate.py squad --dataset dev-v1.1.json --predictions
OUT.jsonl` scores it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llama_ft.files import jsonl_objects, write_atomic
from llama_ft.pipeline import AMPS, PIPELINE_TASKS, PipelineError, pipeline
from llama_ft.tasks.squad.data import SquadDataError, json_records, read_json

FIELDS = {"text-classification": ("text",), "question-answering": ("question", "context")}
# The API argument each flag sets, for errors the library reports by argument name.
FLAGS = {"model": "MODEL", "task": "--task", "tokenizer": "--tokenizer", "device": "--device", "dtype": "--dtype",
         "amp": "--amp", "batch_size": "--batch-size", "max_length": "--max-length"}


class InputError(ValueError):
    """An input file that cannot be read; the message names the file and line."""


def read_inputs(path: Path, task: str) -> list[dict]:
    """The records of a JSONL input file, each checked for the fields `task` needs; for question-answering, a
    .json or .zip file is read as official SQuAD."""
    fields = FIELDS[task]
    example = ", ".join(f'"{f}": ...' for f in fields)
    if not path.is_file():
        raise InputError(f"--input {path}: no such file.")
    if task == "question-answering" and path.suffix.lower() in (".json", ".zip"):
        return squad_inputs(path)
    records = []
    for n, rec in jsonl_objects(path, InputError, hint=f"each line holds one object {{{example}}}"):
        for f in fields:
            if not isinstance(rec.get(f), str) or not rec[f].strip():
                got = "missing" if f not in rec else f"{rec[f]!r}"
                raise InputError(f"{path}:{n}: field \"{f}\" must be a non-empty string ({got}); --task {task} "
                                 f"reads {{{example}}}.")
        records.append(rec)
    if not records:
        raise InputError(f"--input {path}: no records; give one JSON object a line ({{{example}}}).")
    return records


def squad_inputs(path: Path) -> list[dict]:
    """{"id", "question", "context"} of every question of an official SQuAD file, in file order."""
    try:  # read_json refuses a file without the official layout, naming it
        records = [{"id": r["id"], "question": r["question"], "context": r["context"]}
                   for r in json_records(read_json(path), str(path))]
    except SquadDataError as e:
        raise InputError(f"--input {e}") from None
    for n, rec in enumerate(records):
        for f in ("id", "question", "context"):
            if not isinstance(rec[f], str) or not rec[f].strip():
                raise InputError(f"--input {path}: question {n} (id {rec['id']!r}) has no {f} (a non-empty string "
                                 f"is needed; found {rec[f]!r}).")
    if not records:
        raise InputError(f"--input {path}: the file holds no question.")
    return records


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m llama_ft.predict", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("model", metavar="MODEL", help="exported model folder, or a run folder holding model/")
    ap.add_argument("--task", required=True, choices=tuple(PIPELINE_TASKS))
    ap.add_argument("--input", required=True, type=Path,
                    help="JSONL: {\"text\"} or {\"question\", \"context\"}; or an official SQuAD .json/.zip")
    ap.add_argument("--output", required=True, type=Path, help="JSONL predictions, in input order")
    ap.add_argument("--tokenizer", help="tokenizer folder or file (default: the model's own)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, help="tokens per text or QA window (default: the run's setting)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="float32", help="weights: float32, bfloat16 or float16")
    ap.add_argument("--amp", choices=AMPS, help="autocast (default: none for float32 weights)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Predict --input into --output; a bad model, flag or input prints one error line and returns 2."""
    args = parse_args(argv)
    try:
        records = read_inputs(args.input, args.task)
        if not args.output.parent.resolve().is_dir():
            raise InputError(f"--output {args.output}: folder {args.output.parent} does not exist; create it.")
        pipe = pipeline(args.task, args.model, args.tokenizer, device=args.device, dtype=args.dtype, amp=args.amp,
                        batch_size=args.batch_size, max_length=args.max_length, progress=True)
        if args.task == "text-classification":
            preds = pipe([r["text"] for r in records])
        else:
            preds = pipe(question=[r["question"] for r in records], context=[r["context"] for r in records])
        lines = [json.dumps({**({"id": r["id"]} if "id" in r else {}), **p}, ensure_ascii=False)
                 for r, p in zip(records, preds)]
        write_atomic(args.output, "\n".join(lines) + "\n")
    except PipelineError as e:
        print(f"error: {FLAGS.get(e.argument, e.argument)} {e.value}: {e.detail}", file=sys.stderr)
        return 2
    except (InputError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(lines):,} predictions -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
