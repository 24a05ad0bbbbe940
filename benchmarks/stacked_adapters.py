"""LoRA adapters of projections that share their input stacked into one down-projection GEMM, against one GEMM
per adapter, in the same run, with transformers + PEFT on the same batch (llama_ft.model.lora.STACK_SHARED_INPUT).

    python benchmarks/stacked_adapters.py [--shapes 8x192 4x384] [--settings eager compiled] [--policy lora:16]
                                          [--steps 2] [--reps 6] [--threads 2] [--json out.json]

A training step of the engine (random SmolLM2-135M weights, classification head, bf16 autocast, frozen weights
bf16, fp32 adapters, fused AdamW), at the shapes of the SQuAD recipe's micro-batches (8 windows of about 192
tokens, 4 of 384); `compiled` compiles each decoder block as TrainConfig.compile does. One model runs both
settings, and the peer is PEFT's LoRA with the same weights and adapters (benchmarks/train_step.py). The three
alternate `--reps` times, in an order that reverses each turn: median seconds of `--steps` steps, and the median
of the turns' separate / stacked ratios. The losses of both settings before any update are compared. Prints
JSON and a table. The adapters run as written (lora.MERGED_TRAINING off): trained through merged weights, as
train() does with bf16 on a CPU with AMX, their down-projections are stacked either way.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_ft.model.lora as lora  # noqa: E402
from benchmarks.run import add_turn_flags, batch_shapes, emit  # noqa: E402
from benchmarks.train_step import (Setting, Stepper, batch, config, hf_stepper, hf_twin, ours_stepper,  # noqa: E402
                                   paired, release_memory, table, turns)
from llama_ft.hf.loading import random_model  # noqa: E402


def toggled(stepper: Stepper, on: bool):
    """The stepper's step, run with STACK_SHARED_INPUT set to `on` (a compiled block keeps a graph for each)."""
    def step(b):
        lora.STACK_SHARED_INPUT = on
        return stepper(b)
    return step


def bench(shape: tuple[int, int], compiled: bool, policy: str, steps: int, reps: int) -> dict:
    s = Setting(torch.device("cpu"), torch.bfloat16, shape[0], shape[1], steps, reps)
    cfg = config("smollm2-135m")
    b = batch(cfg, s.batch, s.seq, s.device)
    release_memory()
    # Each shape starts with no graphs: the two settings of an earlier shape, recompiled with dynamic shapes for
    # this one, would take dynamo past its recompile limit, and the blocks would run eagerly.
    torch._dynamo.reset()
    ours = ours_stepper(random_model(cfg, "classification", 2, dtype=torch.float32, device=s.device, seed=0),
                        policy, s, compile=compiled)
    peft = hf_stepper(hf_twin(ours.model, cfg, policy, s), s)
    steps_of = {"stacked": toggled(ours, True), "separate": toggled(ours, False), "peft": peft}
    # From identical weights, before any update: the same loss to bf16 rounding.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        first = {}
        for name, on in (("stacked", True), ("separate", False)):
            lora.STACK_SHARED_INPUT = on
            first[name] = float(torch.nn.functional.cross_entropy(ours.model(b["input_ids"], b["attention_mask"])
                                                                  .float(), b["label"]))
    for fn in steps_of.values():  # warm-up; compiled blocks build a graph for each setting
        fn(b)
        fn(b)
    times = turns(steps_of, b, s)  # one model runs both settings, in turns whose order reverses (ABBA)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = s.batch * s.seq
    lora.STACK_SHARED_INPUT = True
    return {"batch": s.batch, "seq": s.seq, "setting": "compiled" if compiled else "eager", "policy": policy,
            **{f"{k}_tok_s": tokens / v for k, v in med.items()},
            "speedup_paired": paired(times, "stacked", "separate"),
            "speedup": med["separate"] / med["stacked"],
            "stacked_vs_peft": med["peft"] / med["stacked"], "separate_vs_peft": med["peft"] / med["separate"],
            "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
            **{f"{k}_first_loss": v for k, v in first.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["8x192", "4x384"], help="BATCHxSEQ")
    ap.add_argument("--settings", nargs="+", default=["eager", "compiled"], choices=("eager", "compiled"))
    ap.add_argument("--policy", default="lora:16")
    add_turn_flags(ap)
    args = ap.parse_args(argv)
    if not args.policy.startswith("lora:"):
        ap.error(f"--policy {args.policy}: stacking concerns adapters; pass a lora:R policy")
    shapes = batch_shapes(ap, args.shapes)
    torch.set_num_threads(args.threads)
    lora.MERGED_TRAINING = False  # what this compares exists in the adapters as written only
    rows = []
    for compiled in [c == "compiled" for c in args.settings]:
        for shape in shapes:
            rows.append(bench(shape, compiled, args.policy, args.steps, args.reps))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    emit(rows, args.json)
    print(table(rows, ["setting", "batch", "seq", "stacked_tok_s", "separate_tok_s", "speedup", "speedup_paired",
                       "peft_tok_s",
                       "stacked_vs_peft", "separate_vs_peft"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
