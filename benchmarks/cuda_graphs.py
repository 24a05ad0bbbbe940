"""The engine's compiled training with and without CUDA graphs (TrainConfig.cuda_graphs), against transformers
(+ PEFT) on the same batches, over examples of varying length.

    python benchmarks/cuda_graphs.py --device cuda [--shape smollm2-135m] [--policies lora:16 full]
                                     [--examples 512] [--batch 16] [--json out.json]

`llama_ft.train.train` (compile=True, classification head, random weights of the shape) runs one epoch over the
same examples twice, cuda_graphs False then True, from the same weights; lengths are drawn once (seeded) between
--min-len and --max-len, so the graphs run meets several length buckets and records each. Reported from each
run's train_log.jsonl: the median step and real tokens/s over the steps after the first third (the median is
what a long run spends per step; the rate still carries each new length bucket's recording), the compile report,
the whole run's wall time, the device's peak memory, and every step's seconds and real tokens. The peer
trains the same weights on the engine's own batches (llama_ft.train.batching.epoch_batches, each right-padded
to its longest example) with the plain loop of benchmarks/train_step.py (PEFT's LoRA for `lora:R`). Ratios:
graphs over no graphs, graphs over the peer, each over the same steps, by median step and by rate. On a CPU
only the run without graphs exists (--settings off; with --eager, a quick smoke test of the benchmark).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run import emit
from benchmarks.train_step import Setting, config, hf_stepper, hf_twin, release_memory, sync
from llama_ft.hf.loading import random_model
from llama_ft.train import TrainConfig, train
from llama_ft.train.batching import collate, epoch_batches, example_lengths
from llama_ft.train.loop import prepare_model

SEED = 1


def examples(n: int, lo: int, hi: int, vocab: int) -> list[dict]:
    r = random.Random(0)
    return [{"input_ids": [r.randrange(3, vocab) for _ in range(r.randrange(lo, hi + 1))], "label": r.randrange(2)}
            for _ in range(n)]


def ours(shape: str, policy: str, data: list[dict], graphs: bool, batch: int, device: torch.device,
         compile: bool = True) -> dict:
    """One epoch through train(): per-step seconds and real tokens from its log, wall time, peak memory."""
    release_memory()
    model = random_model(config(shape), "classification", 2, device=device, seed=0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(policy=policy, lr=1e-4, batch_size=batch, epochs=1, compile=compile, cuda_graphs=graphs,
                          trunk_cache=False, output_dir=out, progress=False, seed=SEED, device=device.type)
        t0 = time.perf_counter()
        res = train(model, data, cfg)
        wall = time.perf_counter() - t0
        log = [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    del model
    return {"seconds": [r["seconds"] for r in log], "real": [r["real_tokens"] for r in log],
            "losses": [r["loss"] for r in log], "wall_s": wall, "compile": res.compile, "peak_memory_bytes": peak}


def peer(shape: str, policy: str, data: list[dict], batch: int, device: torch.device) -> dict:
    """transformers (+ PEFT) over the engine's batches: per-step seconds and real tokens."""
    release_memory()
    s = Setting(device=device, amp=torch.bfloat16, batch=batch, seq=0)
    model = random_model(config(shape), "classification", 2, device=device, seed=0)
    prepare_model(model, TrainConfig(policy=policy), s.frozen_dtype, device)
    twin = hf_twin(model, config(shape), policy, s)
    del model
    step = hf_stepper(twin, s)
    pad = config(shape).pad_token_id
    seconds, real = [], []
    for idx in epoch_batches(example_lengths(data), batch, SEED, 0):
        b = {k: v.to(device) for k, v in collate([data[i] for i in idx], pad).items()}
        sync(device)
        t0 = time.perf_counter()
        step(b)
        sync(device)
        seconds.append(time.perf_counter() - t0)
        real.append(int(b["attention_mask"].sum()))
    del twin, step
    return {"seconds": seconds, "real": real}


def rate(run: dict, skip: int) -> float:
    """Real tokens per second over the steps after the first `skip`."""
    return sum(run["real"][skip:]) / sum(run["seconds"][skip:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", default="smollm2-135m")
    ap.add_argument("--policies", nargs="+", default=["lora:16", "full"])
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--min-len", type=int, default=96)
    ap.add_argument("--max-len", type=int, default=384)
    ap.add_argument("--settings", nargs="+", default=["off", "on"], choices=["off", "on"])
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--eager", action="store_true", help="the engine's blocks eager (a quick smoke test on a CPU)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    data = examples(args.examples, args.min_len, args.max_len, config(args.shape).vocab_size)
    rows = []
    for policy in args.policies:
        runs = {}
        for name in args.settings + ([] if args.no_peer else ["peer"]):
            runs[name] = (peer(args.shape, policy, data, args.batch, device) if name == "peer" else
                          ours(args.shape, policy, data, name == "on", args.batch, device, not args.eager))
            r = runs[name]
            print(f"{policy} {name}: {sum(r['seconds']):.1f} s in steps, {rate(r, len(r['seconds']) // 3):,.0f} "
                  f"tokens/s after the first third, compile {r.get('compile')}", flush=True)
        steps = len(runs[args.settings[0]]["seconds"])
        skip = steps // 3
        row = {"shape": args.shape, "policy": policy, "batch": args.batch, "steps": steps,
               "lengths": [args.min_len, args.max_len], "timed_after_step": skip}
        for name, run in runs.items():
            row[f"{name}_tok_s"] = rate(run, skip)
            row[f"{name}_median_step_s"] = statistics.median(run["seconds"][skip:])
            row[f"{name}_step_seconds"], row[f"{name}_real_tokens"] = run["seconds"], run["real"]
            for key in ("wall_s", "peak_memory_bytes", "compile"):
                if key in run:
                    row[f"{name}_{key}"] = run[key]
        if {"on", "off"} <= runs.keys():
            row["on_over_off"] = row["on_tok_s"] / row["off_tok_s"]
            row["on_over_off_median_step"] = row["off_median_step_s"] / row["on_median_step_s"]
            row["first_losses"] = {k: runs[k]["losses"][:3] for k in ("off", "on")}
            row["max_loss_difference"] = float(np.max(np.abs(np.subtract(runs["on"]["losses"], runs["off"]["losses"]))))
        for name in args.settings:
            if "peer" in runs:
                row[f"{name}_over_peer"] = row[f"{name}_tok_s"] / row["peer_tok_s"]
                row[f"{name}_over_peer_median_step"] = row["peer_median_step_s"] / row[f"{name}_median_step_s"]
        rows.append(row)
    emit(rows, args.json)
    cols = [c for c in ("off_median_step_s", "on_median_step_s", "peer_median_step_s", "on_over_off_median_step",
                        "on_over_peer_median_step", "off_over_peer_median_step", "off_tok_s", "on_tok_s", "peer_tok_s",
                        "on_over_off", "on_over_peer", "off_over_peer", "off_wall_s", "on_wall_s",
                        "max_loss_difference") if c in rows[0]]
    print("| policy | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for r in rows:
        print(f"| {r['policy']} | " + " | ".join(f"{r[c]:,.3f}" if isinstance(r[c], float) else str(r[c])
                                               for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
