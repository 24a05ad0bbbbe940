"""The compiled training step with the GEMM attention backward (llama_ft/model/attention.py) or SDPA's CPU flash
backward: one setting per process, so run them in turn and compare the medians pair by pair.

    for i in 1 2 3; do for m in flash gemm; do python benchmarks/attention_backward.py $m; done; done
    python benchmarks/attention_backward.py gemm --policy full

Random SmolLM2-135M weights, classification head, bf16 autocast, the recipe's micro-batch (4 x 384), blocks
compiled; three warm-up steps (compilation included), then ten timed ones. Prints one JSON line and a table row.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_ft.model.attention as attention  # noqa: E402
from benchmarks.train_step import Setting, batch, config, ours_stepper, timed  # noqa: E402
from llama_ft.hf.loading import random_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("backward", choices=("gemm", "flash"))
    ap.add_argument("--policy", default="lora:16")
    ap.add_argument("--shape", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=384)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    attention.GEMM_BACKWARD = args.backward == "gemm"
    s = Setting(torch.device("cpu"), torch.bfloat16, args.batch, args.seq, compile=True)
    cfg = config(args.shape)
    step = ours_stepper(random_model(cfg, "classification", 2, dtype=torch.float32, seed=0), args.policy, s,
                        compile=True)
    b = batch(cfg, args.batch, args.seq, s.device)
    t0 = time.perf_counter()
    losses = [float(step(b)) for _ in range(3)]
    warm = time.perf_counter() - t0
    times = [timed(step, b, 1, s.device) for _ in range(args.steps)]
    med = statistics.median(times)
    row = {"backward": args.backward, "policy": args.policy, "batch": args.batch, "seq": args.seq,
           "threads": torch.get_num_threads(), "warmup_s": round(warm, 1), "median_s": round(med, 3),
           "min_s": round(min(times), 3), "tok_s": round(args.batch * args.seq / med, 1), "losses": losses}
    print(json.dumps(row))
    print(f"| {args.backward} | {args.policy} | {args.batch} x {args.seq} | {row['median_s']} | {row['min_s']} | "
          f"{row['tok_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
