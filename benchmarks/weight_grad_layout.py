"""The compiled training step with autograd's weight gradients, or with the summed token dimension laid out
contiguously first (llama_ft/model/linear.py), in the same run, with transformers (+ PEFT) on the same batch.

    python benchmarks/weight_grad_layout.py [--policies full lora:16] [--shapes 16x256 4x384] [--steps 2]
                                            [--reps 6] [--threads 2] [--json out.json]

A training step of the engine (random SmolLM2-135M weights, or --shape's; classification head, bf16 autocast, frozen
weights bf16, fused AdamW), each decoder block compiled as TrainConfig.compile does. One model runs both settings (a
compiled block keeps a graph for each), and the peer is transformers with the same weights (PEFT's LoRA under a
LoRA policy; benchmarks/train_step.py). They alternate `--reps` times, in an order that reverses each turn:
median seconds of `--steps` steps, and the median of the turns' paired ratios (tests/model/test_linear.py checks
the gradients). The path is taken on a CPU with AMX only: elsewhere both settings run the same graph. Prints JSON
and a table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_ft.model.linear as linear  # noqa: E402
from benchmarks.run import add_turn_flags, batch_shapes, emit  # noqa: E402
from benchmarks.train_step import (Stepper, compiled_cpu_row, hf_stepper, hf_twin, paired, table, turns)

SETTINGS = {"autograd": False, "token-major": True}


def toggled(stepper: Stepper, token_major: bool):
    """The stepper's step under one setting (read when a compiled block is traced)."""
    def step(b):
        linear.TOKEN_MAJOR = token_major
        return stepper(b)
    return step


def bench(model_shape: str, shape: tuple[int, int], policy: str, steps: int, reps: int) -> dict:
    s, cfg, b, ours = compiled_cpu_row(model_shape, shape, policy, steps, reps)
    steps_of = {name: toggled(ours, on) for name, on in SETTINGS.items()}
    steps_of["peer"] = hf_stepper(hf_twin(ours.model, cfg, policy, s), s)
    default = linear.TOKEN_MAJOR
    # Warm-up (compilation of the backward graphs). The first setting's loss is the untrained model's, as the
    # peer's is (its own copy of the weights); the second setting's comes after a step.
    losses = {k: float(fn(b)) for k, fn in steps_of.items()}
    times = turns(steps_of, b, s)
    linear.TOKEN_MAJOR = default
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = s.batch * s.seq
    return {"batch": s.batch, "seq": s.seq, "policy": policy,
            **{f"{k}_tok_s": tokens / v for k, v in med.items()},
            "token-major_vs_autograd": paired(times, "token-major", "autograd"),
            **{f"{k}_vs_peer": paired(times, k, "peer") for k in SETTINGS},
            "first_loss": losses["autograd"], "peer_first_loss": losses["peer"],
            "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="smollm2-135m", help="model shape (benchmarks/train_step.py's names)")
    ap.add_argument("--policies", nargs="+", default=["full", "lora:16"])
    ap.add_argument("--shapes", nargs="+", default=["16x256"], help="BATCHxSEQ")
    add_turn_flags(ap)
    args = ap.parse_args(argv)
    shapes = batch_shapes(ap, args.shapes)
    torch.set_num_threads(args.threads)
    rows = []
    for policy in args.policies:
        for shape in shapes:
            rows.append(bench(args.shape, shape, policy, args.steps, args.reps))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    emit(rows, args.json)
    print(table(rows, ["policy", "batch", "seq", *[f"{k}_tok_s" for k in SETTINGS], "peer_tok_s",
                       "token-major_vs_autograd", *[f"{k}_vs_peer" for k in SETTINGS]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
