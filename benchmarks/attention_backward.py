"""The compiled training step with SDPA's CPU flash backward, or with the GEMM attention backward
(llama_ft/model/attention.py) over 1 or more blocks of query rows, in the same run, with transformers + PEFT on
the same batch.

    python benchmarks/attention_backward.py [--shapes 4x384 16x256] [--blocks 1 4] [--policy lora:16]
                                            [--model smollm2-135m] [--layers N]
                                            [--steps 2] [--reps 6] [--threads 2] [--json out.json]

A training step of the engine (random weights of `--model`'s shape, or of its first `--layers` blocks;
classification head, bf16 autocast, frozen weights bf16, fused AdamW), each decoder block compiled as
TrainConfig.compile does. One model runs every setting (a compiled block keeps a graph for each), and the peer is
transformers with the same weights (PEFT's LoRA under a LoRA policy; benchmarks/train_step.py). They alternate
`--reps` times, in an order that reverses each turn: median seconds of `--steps` steps, and the medians of the
turns' paired ratios against the flash backward and against the GEMM backward over one block
(tests/model/test_attention.py checks their gradients). Prints JSON and a table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_ft.model.attention as attention  # noqa: E402
from benchmarks.run import add_turn_flags, batch_shapes, emit  # noqa: E402
from benchmarks.train_step import (SHAPES, Setting, Stepper, batch, config, hf_stepper, hf_twin,  # noqa: E402
                                   ours_stepper, paired, release_memory, table, turns)
from llama_ft.hf.loading import random_model  # noqa: E402


def settings(blocks: list[int]) -> dict[str, tuple[bool, int]]:
    """Setting name -> (GEMM_BACKWARD, QUERY_BLOCKS): the flash backward, then the GEMM one over each count."""
    return {"flash": (False, 1), **{f"gemm-{n}": (True, n) for n in blocks}}


def toggled(stepper: Stepper, setting: tuple[bool, int]):
    """The stepper's step, run under one attention setting (both are read when a compiled block is traced)."""
    def step(b):
        attention.GEMM_BACKWARD, attention.QUERY_BLOCKS = setting
        return stepper(b)
    return step


def bench(shape: tuple[int, int], blocks: list[int], policy: str, steps: int, reps: int,
          model: str = "smollm2-135m", layers: int | None = None) -> dict:
    s = Setting(torch.device("cpu"), torch.bfloat16, shape[0], shape[1], steps, reps)
    cfg = config(model)
    if layers is not None:  # every block costs the same at any depth: the first few show a wide shape's blocks
        cfg.num_hidden_layers = layers
    b = batch(cfg, s.batch, s.seq, s.device)
    release_memory()
    torch._dynamo.reset()  # each shape starts with no graphs (dynamo's recompile limit)
    ours = ours_stepper(random_model(cfg, "classification", 2, dtype=torch.float32, device=s.device, seed=0),
                        policy, s, compile=True)
    names = list(settings(blocks))
    steps_of = {name: toggled(ours, setting) for name, setting in settings(blocks).items()}
    steps_of["peer"] = hf_stepper(hf_twin(ours.model, cfg, policy, s), s)
    default = (attention.GEMM_BACKWARD, attention.QUERY_BLOCKS)
    for fn in steps_of.values():  # warm-up (compilation of the backward graphs)
        fn(b)
    times = turns(steps_of, b, s)
    attention.GEMM_BACKWARD, attention.QUERY_BLOCKS = default
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = s.batch * s.seq
    ratios = {f"{k}_vs_{base}": paired(times, k, base)
              for base in ("flash", "gemm-1") for k in names if k != base and base in times}
    return {"model": model, "layers": cfg.num_hidden_layers, "batch": s.batch, "seq": s.seq, "policy": policy,
            **{f"{k}_tok_s": tokens / v for k, v in med.items()}, **ratios,
            **{f"{k}_vs_peer": med["peer"] / med[k] for k in names},
            "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["4x384", "16x256"], help="BATCHxSEQ")
    ap.add_argument("--blocks", nargs="+", type=int, default=[1, attention.QUERY_BLOCKS],
                    help="query-row blocks of the GEMM backward to compare (each a setting)")
    ap.add_argument("--policy", default="lora:16")
    ap.add_argument("--model", default="smollm2-135m", choices=[*SHAPES, "tiny"],
                    help="the model shape (random weights; tiny: a check of the plumbing)")
    ap.add_argument("--layers", type=int, default=None,
                    help="only the first N decoder blocks: a wide shape's blocks in less time and memory")
    add_turn_flags(ap)
    args = ap.parse_args(argv)
    shapes = batch_shapes(ap, args.shapes)
    if any(n < 1 for n in args.blocks):
        ap.error(f"--blocks {args.blocks}: each is a count of query-row blocks, 1 or more")
    most = config(args.model).num_hidden_layers
    if args.layers is not None and not 1 <= args.layers <= most:
        ap.error(f"--layers {args.layers}: {args.model} has {most} decoder blocks; pass 1 to that many")
    torch.set_num_threads(args.threads)
    blocks = list(dict.fromkeys(args.blocks))
    rows = []
    for shape in shapes:
        rows.append(bench(shape, blocks, args.policy, args.steps, args.reps, args.model, args.layers))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    emit(rows, args.json)
    names = list(settings(blocks))
    print(table(rows, ["model", "layers", "batch", "seq", *[f"{k}_tok_s" for k in names], "peer_tok_s",
                       *[k for k in rows[0] if "_vs_flash" in k or "_vs_gemm-1" in k], f"gemm-{blocks[-1]}_vs_peer"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
