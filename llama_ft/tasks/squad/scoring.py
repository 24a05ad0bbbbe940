"""Scoring SQuAD per question: a windowed question set predicted, decoded and scored with any model state
(SQuAD v2's no-answer threshold calibrated on held-out questions), the prompted zero-shot row, and the summary
table of the recipe's rows."""
from __future__ import annotations

from dataclasses import dataclass

from llama_ft.metrics import squad_em_f1, squad_report
from llama_ft.tasks.squad.data import SquadExample, references
from llama_ft.tasks.squad.decode import (
    MAX_ANSWER_TOKENS,
    N_BEST,
    QuestionPrediction,
    answers,
    decode_rule,
    best_null_threshold,
    decode_predictions,
    na_probs,
    study_window_predictions,
)
from llama_ft.tasks.squad.windows import build_windows, training_examples
from llama_ft.tasks.squad.zero_shot import answer_by_prompt, clean_answer
from llama_ft.train import predict
from llama_ft.train.distributed import map_sharded


@dataclass
class Predicted:
    """One model state's predictions on a QuestionSet (QuestionSet.predictions): per question, and the windows'
    logits when the study's per-window scoring wants them; `threshold`: the no-answer threshold the answers
    take (SQuAD v2)."""
    preds: dict[str, QuestionPrediction]
    threshold: float | None
    logits: list | None = None


class QuestionSet:
    """One set of questions, windowed once for one tokenizer; `decode` and `predictions` work with any model
    state, `report` scores what `predictions` returned.

    amp: the autocast dtype by name (auto, bf16, fp16 on CUDA, none; llama_ft.train.config.inference_amp);
    n_best / max_answer_tokens: see decode;
    qa_format: the windows' input format (windows.QA_FORMATS), `pair` decoded by transformers' pipeline rule;
    compile: predict's, for every pass over the set (auto: when the pass is long enough to repay the warm-up)."""

    def __init__(self, name: str, examples: list[SquadExample], tokenizer, max_length: int = 384,
                 stride: int = 128, *, amp: str = "auto", n_best: int = N_BEST,
                 max_answer_tokens: int = MAX_ANSWER_TOKENS, progress: bool = True, qa_format: str = "template",
                 compile: bool | str = "auto"):
        self.name, self.examples, self.tokenizer, self.amp, self.compile = name, examples, tokenizer, amp, compile
        self.n_best, self.max_answer_tokens, self.progress = n_best, max_answer_tokens, progress
        self.rule = decode_rule(qa_format)
        self.windows, self.counts = build_windows(tokenizer, examples, max_length, stride, progress=progress,
                                                  desc=f"windows {name}", qa_format=qa_format)
        self.refs = references(examples)

    def training_examples(self) -> list[dict]:
        """The engine's examples of this set's labelled windows (a train set, or an eval_set for its loss)."""
        return training_examples(self.windows)

    def decode(self, model, batch_size: int = 32) -> tuple[dict[str, QuestionPrediction], list]:
        """({qid: prediction}, the windows' span logits) of `model` on this set. Under torchrun each process
        predicts its shard of the windows and all decode the whole set (every process must call it, and so
        `threshold`, `predictions`, `em_f1` and predict_sets)."""
        logits = map_sharded(lambda part: predict(model, [w.as_example() for w in part], batch_size=batch_size,
                                                  amp=self.amp, progress=f"score {self.name}" if self.progress
                                                  else None, compile=self.compile), self.windows)
        return decode_predictions(self.examples, self.windows, logits, self.n_best, self.max_answer_tokens,
                                  self.rule), logits

    def threshold(self, model) -> float:
        """The SQuAD v2 no-answer threshold that maximises F1 on this (held-out) set."""
        return best_null_threshold(self.decode(model)[0], self.refs)

    def predictions(self, model, threshold: float | None = None, per_window: bool = False) -> Predicted:
        """`model`'s predictions on this set, to report on later (`report`); `threshold`: the no-answer
        threshold its answers take; `per_window` keeps the windows' logits for the study's per-window scoring."""
        preds, logits = self.decode(model)
        return Predicted(preds, threshold, logits if per_window else None)

    def report(self, predicted: Predicted) -> tuple[dict, dict[str, str]]:
        """(the full report, {qid: answer}) of predictions made by `predictions`."""
        preds, threshold = predicted.preds, predicted.threshold
        texts = answers(preds, threshold)
        report = squad_report(texts, self.refs, na_probs(preds, threshold) if threshold is not None else None)
        if threshold is not None:
            report["null_threshold"] = threshold
        if predicted.logits is not None:
            report["per_window"] = squad_report(*study_window_predictions(self.examples, self.windows,
                                                                          predicted.logits, self.tokenizer))
        return report, texts

    def em_f1(self, model) -> dict[str, float]:
        """Exact match and F1 (0-100) of `model`, the cheap metrics for evaluation during training; a v2 set
        answers '' by the threshold calibrated on itself."""
        preds = self.decode(model)[0]
        v2 = any(not g for g in self.refs.values())
        return squad_em_f1(answers(preds, best_null_threshold(preds, self.refs) if v2 else None), self.refs)


def predict_sets(model, sets: dict[str, QuestionSet], calibration: QuestionSet | None = None,
                 per_window: bool = False) -> dict[str, Predicted]:
    """{set name: `model`'s predictions} on every set, to report on later (report_sets): a recipe predicts with
    each model state as it goes and computes every report at the end, so that the reports' lexicons (METEOR's
    WordNet) load once and after training. With a calibration set (SQuAD v2) its no-answer threshold applies to
    all of them; `per_window` keeps what the study's scoring of `test` needs."""
    threshold = calibration.threshold(model) if calibration is not None else None
    return {key: qs.predictions(model, threshold, per_window and key == "test") for key, qs in sets.items()}


def report_sets(sets: dict[str, QuestionSet], predicted: dict[str, Predicted]
                ) -> tuple[dict[str, dict], dict[str, dict[str, str]]]:
    """({set name: report}, {set name: {qid: answer}}) of predict_sets' predictions."""
    reports, texts = {}, {}
    for key, p in predicted.items():
        reports[key], texts[key] = sets[key].report(p)
    return reports, texts


def prompted_replies(lm, tokenizer, examples: list[SquadExample], amp: str = "auto") -> dict[str, str]:
    """{qid: raw reply} of a causal LM prompted zero-shot on `examples` (prompted_report scores them). Under
    torchrun each process prompts its shard of the questions and all get every reply (every process must call
    it)."""
    unanswerable = any(not g for g in references(examples).values())
    return map_sharded(lambda part: answer_by_prompt(lm, tokenizer, part, amp=amp, unanswerable=unanswerable),
                       examples)


def prompted_report(examples: list[SquadExample], raw: dict[str, str]) -> tuple[dict, dict[str, str]]:
    """(report, cleaned answers) of prompted replies; the report's `unsnapped` entry scores the cleaned replies
    before they are snapped to the context."""
    refs = references(examples)
    ctx = {ex.qid: ex.context for ex in examples}
    texts = {q: clean_answer(r, ctx[q]) for q, r in raw.items()}
    report = squad_report(texts, refs)
    report["unsnapped"] = squad_em_f1({q: clean_answer(r, ctx[q], snap=False) for q, r in raw.items()}, refs)
    return report, texts


def summary_table(rows: dict[str, dict[str, dict]]) -> str:
    """A markdown table: one line per row name, exact match and F1 for each question set (test first)."""
    sets = sorted({s for r in rows.values() for s in r}, key=lambda s: (s != "test", s))
    head = "| row | " + " | ".join(f"{s} EM | {s} F1" for s in sets) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(sets)]
    for name, r in rows.items():
        cells = [f"{r[s]['exact_match']:.2f} | {r[s]['f1']:.2f}" if s in r else "- | -" for s in sets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
