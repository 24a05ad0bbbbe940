"""Scoring a classifier on labelled rows, and its predictions for unlabelled ones (GLUE's submission format)."""
from __future__ import annotations

from pathlib import Path

import torch

from llama_ft.files import write_atomic
from llama_ft.metrics import classification_report
from llama_ft.tasks.text.data import LabelSet, TextExample, encode
from llama_ft.train import VersionScores, predict, predict_versions
from llama_ft.train.distributed import map_sharded


def logits_of(model, rows: list[TextExample], tokenizer, max_length: int = 128, amp: str = "auto",
              compile: bool | str = "auto") -> torch.Tensor:
    """Logits [len(rows), num_labels] of `model` on `rows`; under torchrun each process predicts its shard of
    the rows and all receive the whole (every process must call it). `compile`: predict's."""
    return map_sharded(lambda part: predict(model, encode(part, tokenizer, max_length), batch_size=64, amp=amp,
                                            progress="score", compile=compile), rows)


def probabilities(model, rows: list[TextExample], tokenizer, max_length: int = 128, amp: str = "auto",
                  compile: bool | str = "auto") -> torch.Tensor:
    """Class probabilities [len(rows), num_labels] of `model` on `rows` (sharded over processes: logits_of)."""
    return logits_of(model, rows, tokenizer, max_length, amp, compile).float().softmax(-1)


def score_rows(model, rows: list[TextExample], tokenizer, max_length: int = 128, amp: str = "auto",
               compile: bool | str = "auto") -> dict:
    """classification_report (accuracy, weighted P/R/F1, confusion matrix) of `model` on labelled `rows`
    (sharded over processes: logits_of)."""
    logits = logits_of(model, rows, tokenizer, max_length, amp, compile)
    return classification_report([r.label for r in rows], logits.argmax(-1).tolist())


def score_versions(model, rows: list[TextExample], versions: list, tokenizer, max_length: int = 128,
                   amp: str = "auto", compile: bool | str = "auto") -> tuple[list[dict], VersionScores]:
    """score_rows of `model` under each version of its trainable weights (None: those it holds; see
    llama_ft.train.predict_versions, which runs a frozen bottom they share once), and this process's timings.
    Sharded over processes like score_rows."""
    timings: list[VersionScores] = []

    def part(shard: list[TextExample]) -> torch.Tensor:
        scores = predict_versions(model, encode(shard, tokenizer, max_length), versions, batch_size=64, amp=amp,
                                  progress="score", compile=compile)
        timings.append(scores)
        return torch.cat(scores.outputs, dim=1)  # one row per example, so that the shards join by rows

    logits = map_sharded(part, rows)
    gold = [r.label for r in rows]
    reports = [classification_report(gold, x.argmax(-1).tolist()) for x in logits.chunk(len(versions), dim=1)]
    timings[0].outputs = []
    return reports, timings[0]


def write_predictions(path: str | Path, rows: list[TextExample], probs: torch.Tensor, labels: LabelSet) -> Path:
    """`index<TAB>prediction<TAB>probability` a row, under that header: GLUE's submission format (the label as
    the data writes it: SST-2's 0/1) plus the predicted class's probability."""
    best, ids = probs.max(-1)
    lines = ["index\tprediction\tprobability"]
    lines += [f"{r.index}\t{labels.values[i]}\t{p:.6f}" for r, i, p in zip(rows, ids.tolist(), best.tolist())]
    return write_atomic(Path(path), "\n".join(lines) + "\n")
