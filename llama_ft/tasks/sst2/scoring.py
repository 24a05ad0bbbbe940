"""Scoring SST-2's prompted zero-shot rows (as the model answers, and batch-calibrated); a classifier's rows are
scored by llama_ft.tasks.text.scoring."""
from __future__ import annotations

import numpy as np

from llama_ft.metrics import classification_report
from llama_ft.tasks.sst2.data import Example
from llama_ft.tasks.sst2.zero_shot import batch_calibrate, classify_by_prompt
from llama_ft.train.distributed import map_sharded

PROMPTED = "zero-shot (prompt)"
CALIBRATED = "zero-shot (prompt, batch-calibrated)"


def prompted_rows(lm, tokenizer, rows: list[Example], amp: str = "auto") -> dict[str, dict]:
    """{row name: report} of a causal LM prompted zero-shot on `rows`: as it answers, and batch-calibrated
    (which needs at least two rows). Under torchrun each process prompts its shard of the rows and all of them
    score the whole set, so the calibration sees every sentence (every process must call it)."""
    pred, p_pos = map_sharded(lambda part: np.column_stack(
        classify_by_prompt(lm, tokenizer, [r.sentence for r in part], amp=amp)), rows).T
    gold = [r.label for r in rows]
    out = {PROMPTED: classification_report(gold, pred.astype(int).tolist())}
    if len(rows) > 1:
        out[CALIBRATED] = classification_report(gold, batch_calibrate(p_pos).tolist())
    return out
