"""The compiled training step under the partitioner's activation memory budget (llama_ft.train.compile.
ACTIVATION_MEMORY_BUDGET): what the blocks save for backward and how fast the step runs, per policy and budget.

    python benchmarks/activation_budget.py [--policies lora:16 full last:4] [--budgets 1.0 0.9 0.7]
        [--batch 4] [--seq 384] [--threads 2] [--json out.json]

Random SmolLM2-135M weights, classification head, bf16 autocast, the engine's dtypes, blocks compiled; each
(policy, budget) in a process of its own, since the partitioner reads the budget when a graph first compiles.
Three warm-up steps (compilation included), then `--steps` timed ones; `saved` is the bytes of the distinct tensors
the step keeps for backward that are not parameters. Budget 1.0 is torch's default partitioning.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_ft.train.compile as compile_mod  # noqa: E402
from benchmarks.train_step import Setting, batch, config, ours_stepper, timed  # noqa: E402
from llama_ft.hf.loading import random_model  # noqa: E402


def one(policy: str, budget: float, batch_size: int, seq: int, steps: int) -> dict:
    """One setting, in this process."""
    compile_mod.ACTIVATION_MEMORY_BUDGET["cpu"] = budget
    s = Setting(torch.device("cpu"), torch.bfloat16, batch_size, seq, compile=True)
    cfg = config("smollm2-135m")
    model = random_model(cfg, "classification", 2, dtype=torch.float32, seed=0)
    step = ours_stepper(model, policy, s, compile=True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    b = batch(cfg, batch_size, seq, s.device)
    t0 = time.perf_counter()
    losses = [float(step(b)) for _ in range(3)]
    warmup = time.perf_counter() - t0
    storages: dict[int, int] = {}

    def keep(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        step(b)
    times = [timed(step, b, 1, s.device) for _ in range(steps)]
    med = statistics.median(times)
    return {"policy": policy, "budget": budget, "batch": batch_size, "seq": seq, "threads": torch.get_num_threads(),
            "saved_bytes": sum(storages.values()), "warmup_s": round(warmup, 1), "median_s": round(med, 4),
            "min_s": round(min(times), 4), "tokens_per_s": round(batch_size * seq / med, 1),
            "losses": losses}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", nargs="+", default=["lora:16", "full", "last:4"])
    ap.add_argument("--budgets", nargs="+", type=float, default=[1.0, 0.9])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=384)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, help="OpenMP threads of each process (default: torch's)")
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=2, metavar=("POLICY", "BUDGET"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(one(args.child[0], float(args.child[1]), args.batch, args.seq, args.steps)))
        return 0
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    rows = []
    for policy in args.policies:
        for budget in args.budgets:
            run = subprocess.run([sys.executable, __file__, "--child", policy, str(budget), "--batch", str(args.batch),
                                  "--seq", str(args.seq), "--steps", str(args.steps)],
                                 env=env, capture_output=True, text=True)
            if run.returncode != 0:
                raise SystemExit(f"{policy} at budget {budget} failed:\n{run.stderr[-3000:]}")
            rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    res = {"cpu": platform.processor() or platform.machine(), "rows": rows}
    print(json.dumps(res, indent=1))
    print(f"\nCompiled training step, SmolLM2-135M shape, {args.batch} x {args.seq}, bf16 autocast, one process per "
          f"setting; speed against the first budget of the same policy\n")
    print("| policy | budget | saved for backward MiB | KiB per token | s per step (median) | tokens/s | speed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        base = next(q for q in rows if q["policy"] == r["policy"])
        print(f"| {r['policy']} | {r['budget']} | {r['saved_bytes'] / 2**20:.0f} | "
              f"{r['saved_bytes'] / (r['batch'] * r['seq']) / 1024:.0f} | {r['median_s']:.3f} | "
              f"{r['tokens_per_s']:.0f} | {base['median_s'] / r['median_s']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
