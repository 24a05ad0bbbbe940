"""Score predictions and print the study's tables.

    python evaluate.py squad --dataset DATA.json[.zip] --predictions PRED.json [--na-probs NA.json]
        [--before PRED0.json [--before-na-probs NA0.json]] [--only-predicted] [--json OUT.json]
    python evaluate.py classification --gold GOLD --predictions PRED [--before PRED0] [--json OUT.json]

SQuAD files use the official formats (predictions {question_id: answer_text}), or the JSONL that
`python -m llama_ft.predict` writes (one {"id", "answer", ...} a line). A question without prediction
scores 0 in exact_match/f1 and is scored as '' by the other metrics; the count is printed. Label files are a
JSON list, a JSON object {id: label}, a TSV with a `label` or `prediction` column, or llama_ft.predict's
JSONL (see llama_ft/metrics/inputs.py). With --before, a SQuAD table is followed by the paired difference of
exact match and F1 over the same questions, with its bootstrap interval: whether two runs differ by more than the
draw of questions. METEOR needs the NLTK data built once by `python -m llama_ft.metrics.nltk_data`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llama_ft.cli.errors import run_guarded
from llama_ft.files import write_json
from llama_ft.metrics import (
    classification_report,
    format_classification_table,
    format_squad_table,
    squad_report,
)
from llama_ft.metrics.inputs import (
    InputError,
    align_labels,
    load_labels,
    load_na_probs,
    load_predictions,
    load_squad_dataset,
)
from llama_ft.metrics.paired import format_paired, paired_squad
from llama_ft.metrics.squad import squad_em_f1_per_question


def _squad(args: argparse.Namespace) -> dict:
    references = load_squad_dataset(args.dataset)
    runs = {"after": (args.predictions, args.na_probs)}
    if args.before:
        runs = {"before": (args.before, args.before_na_probs), **runs}
    loaded = {name: load_predictions(path) for name, (path, _) in runs.items()}
    if args.only_predicted:  # e.g. train_squad.py --eval-limit 1000 answered the file's first 1,000 questions
        references = {qid: golds for qid, golds in references.items() if qid in loaded["after"]}
        if not references:
            raise InputError(f"{args.predictions}: none of its question ids is in {args.dataset}; "
                             "--only-predicted leaves nothing to score. Is it the right dataset?")
        print(f"--only-predicted: scoring the {len(references):,} questions {args.predictions} answers")
    reports = {}
    for name, (path, na_path) in runs.items():
        predictions = loaded[name]
        if predictions and not any(qid in references for qid in predictions):
            raise InputError(
                f"{path}: none of its {len(predictions)} question ids is in {args.dataset} "
                f"(first: {next(iter(predictions))!r}); is it the right dataset?"
            )
        na_probs = load_na_probs(na_path) if na_path else None
        reports[name] = report = squad_report(predictions, references, na_probs)
        if report["missing_predictions"]:
            missing, questions = report["missing_predictions"], report["questions"]
            print(
                f"{path}: {missing} of {questions} questions had no prediction and score 0 "
                "(exact_match/f1; the empty answer for the other metrics)"
            )
        if report["unknown_predictions"]:
            print(
                f"{path}: {report['unknown_predictions']} predictions have ids not in {args.dataset} "
                "and were ignored"
            )
    print(format_squad_table(reports.get("before"), reports["after"]))
    if args.before:  # which of the two is better, beyond the luck of which questions were drawn
        scores = {name: squad_em_f1_per_question(loaded[name], references) for name in runs}
        reports["paired"] = paired_squad(scores["before"], scores["after"], seed=args.seed)
        print(f"\nAfter - before, paired over the same questions (percentile bootstrap, "
              f"{reports['paired']['f1']['resamples']:,} resamples):\n")
        print(format_paired(reports["paired"]))
    return reports


def _classification(args: argparse.Namespace) -> dict:
    gold = load_labels(args.gold)
    paths = ([args.before] if args.before else []) + [args.predictions]
    # Rows are named by file name, or by the path as given when both files share a name (runs/a/preds.tsv vs
    # runs/b/preds.tsv), or by before/after when they are the same file.
    names = [Path(p).name for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    if len(set(names)) < len(names):
        names = [f"before: {names[0]}", f"after: {names[1]}"]
    reports = {}
    for name, path in zip(names, paths):
        y_true, y_pred = align_labels(gold, load_labels(path), args.gold, path)
        reports[name] = classification_report(y_true, y_pred)
    print(format_classification_table(reports))
    return reports


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, score, print the table; a bad input prints one error line and returns 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tasks = parser.add_subparsers(dest="task", required=True)
    squad = tasks.add_parser("squad", help="SQuAD v1.1/v2.0: bleu, exact_match, f1, meteor, rouge, squad_v2")
    squad.add_argument("--dataset", required=True, help="official SQuAD dataset, .json or .zip")
    squad.add_argument("--predictions", required=True,
                       help="{question_id: answer_text} JSON, or llama_ft.predict's JSONL")
    squad.add_argument("--na-probs", help="{question_id: no-answer probability} JSON for --predictions")
    squad.add_argument("--before", help="predictions before fine-tuning: adds the Before column")
    squad.add_argument("--before-na-probs", help="no-answer probabilities for --before")
    squad.add_argument("--only-predicted", action="store_true",
                       help="score only the questions --predictions answers (a run with --eval-limit), "
                            "not the whole --dataset")
    squad.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap (with --before)")
    squad.add_argument("--json", help="also write the reports to this JSON file")
    classification = tasks.add_parser("classification", help="SST-2: accuracy, weighted precision/recall/F1")
    classification.add_argument("--gold", required=True, help="true labels: JSON list/object, TSV or JSONL")
    classification.add_argument("--predictions", required=True, help="predicted labels, same layout")
    classification.add_argument("--before", help="predictions before fine-tuning: adds a row")
    classification.add_argument("--json", help="also write the reports to this JSON file")
    args = parser.parse_args(argv)
    if args.task == "squad" and args.before_na_probs and not args.before:
        parser.error("--before-na-probs needs --before")
    return run_guarded(lambda: _score(args))


def _score(args: argparse.Namespace) -> int:
    reports = _squad(args) if args.task == "squad" else _classification(args)
    if args.json:
        write_json(args.json, reports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
