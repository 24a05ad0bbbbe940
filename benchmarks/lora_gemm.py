"""A LoRA adapter's up-projection added into its frozen GEMM's output in place (llama_ft.model.lora_gemm, one
operator with a backward of its own) against torch.addmm, which copies that output first
(llama_ft.model.lora.IN_PLACE_UP_PROJECTION), in the same run, with transformers + PEFT on the same batch.

    python benchmarks/lora_gemm.py [--shapes 8x192 4x384] [--settings eager compiled] [--policy lora:16]
                                   [--steps 2] [--reps 6] [--threads 2] [--json out.json]

The step, the turns and the table are those of benchmarks/stacked_adapters.py: one model runs both settings in
turns whose order reverses (compiled blocks keep a graph for each), PEFT alongside; the median of the turns'
addmm / in-place ratios; the losses of both settings before any update.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stacked_adapters import Switch, main  # noqa: E402

IN_PLACE = Switch("IN_PLACE_UP_PROJECTION", "in_place", "addmm")

if __name__ == "__main__":
    raise SystemExit(main(switch=IN_PLACE, doc=__doc__))
