"""The study's reports: every SST-2 and SQuAD metric in one dict, and the markdown tables it printed."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from llama_ft.metrics.bleu import bleu
from llama_ft.metrics.classification import accuracy, class_labels, confusion_matrix, precision_recall_f1
from llama_ft.metrics.meteor import meteor
from llama_ft.metrics.rouge import ROUGE_TYPES, rouge
from llama_ft.metrics.squad import squad_em_f1, squad_v2

SQUAD_ROWS = (
    ("bleu", "bleu", "-"),
    ("exact_match", "exact_match", "-"),
    ("f1", "f1", "-"),
    ("meteor", "meteor", "score"),
    ("rouge1", "rouge-1", "-"),
    ("rouge2", "rouge-2", "-"),
    ("rougeL", "rouge-L", "-"),
    ("rougeLsum", "rouge-Lsum", "-"),
)


def classification_report(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> dict:
    """Return accuracy, weighted precision/recall/f1 (0-1, as the study), labels and confusion matrix."""
    scores = precision_recall_f1(y_true, y_pred, average="weighted", zero_division=0.0)
    return {
        "accuracy": accuracy(y_true, y_pred),
        **scores,
        "labels": class_labels(y_true, y_pred),
        "confusion_matrix": confusion_matrix(y_true, y_pred).tolist(),
        "examples": len(y_true),
    }


def squad_report(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    na_probs: Mapping[str, float] | None = None,
    *,
    seed: int = 0,
) -> dict:
    """Return each metric of the study's SQuAD table: bleu, exact_match, f1, meteor, rouge*, squad_v2.

    Conventions: bleu, meteor and rouge are 0-1 (evaluate's "bleu", "meteor", and "rouge" with its bootstrap
    median drawn with `seed`); exact_match, f1 and squad_v2 are 0-100. Every gold answer is a reference.
    A question without prediction scores 0 in exact_match/f1 (the official v1.1 rule) and is scored as the
    empty answer '' by the other metrics; a question without gold answer has the reference '', and then
    exact_match/f1 follow the v2.0 rules (see `squad_em_f1`). Predictions
    for ids outside `references` are ignored. The counts are returned as `questions`, `missing_predictions`
    and `unknown_predictions`.
    """
    if not references:
        raise ValueError("squad_report: no reference questions to score")
    answers = {qid: predictions.get(qid, "") for qid in references}
    texts = list(answers.values())
    golds = [list(references[qid]) or [""] for qid in references]
    report = {"bleu": bleu(texts, golds)["bleu"]}
    report.update(squad_em_f1(predictions, references))  # v2.0 rules when a question has no answer
    report["meteor"] = meteor(texts, golds)
    report.update(rouge(texts, golds, ROUGE_TYPES, aggregate="bootstrap", seed=seed))
    report["squad_v2"] = squad_v2(answers, references, na_probs)
    report["questions"] = len(references)
    report["missing_predictions"] = sum(qid not in predictions for qid in references)
    report["unknown_predictions"] = sum(qid not in references for qid in predictions)
    return report


def _cell(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def format_squad_table(before: Mapping | None, after: Mapping) -> str:
    """Return the study's markdown table of squad_report dicts: Metric | Sub-Metric | value(s)."""
    reports = [after] if before is None else [before, after]
    header = ["Value"] if before is None else ["Before Fine-Tuning", "After Fine-Tuning"]
    lines = ["| Metric | Sub-Metric | " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(header)]
    for key, metric, sub in SQUAD_ROWS:
        lines.append(f"| {metric} | {sub} | " + " | ".join(_cell(r[key]) for r in reports) + " |")
    for key in sorted(after["squad_v2"]):
        cells = [_cell(r["squad_v2"][key]) if key in r["squad_v2"] else "-" for r in reports]
        lines.append(f"| squad_v2 | {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_classification_table(rows: Mapping[str, Mapping]) -> str:
    """Return the study's SST-2 markdown table: a row per model, Accuracy (%) | Precision | Recall | F1."""
    lines = ["| Model | Accuracy (%) | Precision | Recall | F1 |", "|---|---:|---:|---:|---:|"]
    for name, report in rows.items():
        lines.append(
            f"| {name} | {100 * report['accuracy']:.2f} | {report['precision']:.4f} | "
            f"{report['recall']:.4f} | {report['f1']:.4f} |"
        )
    return "\n".join(lines)
