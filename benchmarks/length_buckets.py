"""Compiled CPU training with micro-batch lengths rounded up to a multiple (llama_ft.train.compile.CPU_LENGTH_MULTIPLE)
against each micro-batch at its longest example's length, on real SQuAD windows.

    python benchmarks/length_buckets.py [--steps 12] [--order 1 16 16 1] [--json out.json]

Each entry of --order is one process (oneDNN's kernel cache and inductor's state start afresh in each), run in that
order so that a drift of the machine's speed reaches both settings alike: the engine (`llama_ft.train.train`,
compiled from the first step) trains the embedded model with train_squad.py's default preset (lora:16, batch 16,
global batch 32, micro-batch caps 1,536 / 2,560 tokens, 384 / 128 windows) over the first steps x 32 training
questions, with CPU_LENGTH_MULTIPLE set to the entry (1: no rounding). Reported per process: real tokens/s over the
steps after the first two (the compiling steps), padded tokens, and the seconds oneDNN spent building kernels
(its verbose log's cache misses). Consecutive runs form pairs (1 16 16 1: two pairs); each pair gives the ratio of
the other setting's tokens/s over the first entry's.
The setting is internal to the engine (transformers has no counterpart), so no peer runs here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_ft  # noqa: E402
import llama_ft.train.compile as compile_mod  # noqa: E402
from benchmarks.compile_shapes import training_examples  # noqa: E402
from llama_ft.train import TrainConfig, train  # noqa: E402
from train_squad import PRESETS  # noqa: E402

SKIP = 2  # the steps that compile (static, then dynamic lengths)


def one(multiple: int, steps: int) -> dict:
    """In this process: one run of the preset with CPU_LENGTH_MULTIPLE = multiple; the step log's figures."""
    compile_mod.CPU_LENGTH_MULTIPLE = multiple
    return {"multiple": multiple, **preset_run(steps)}


def preset_run(steps: int) -> dict:
    """In this process: train_squad.py's default preset, compiled from the first step, over the first steps x 32
    training questions; the step log's figures (tokens/s over the steps after the first SKIP), the whole train()
    call's seconds, its compile report and the peak resident memory the log recorded."""
    preset = PRESETS["default"]
    keys = ("policy", "lr", "weight_decay", "schedule", "warmup_ratio", "batch_size", "global_batch",
            "micro_batch_tokens", "compiled_micro_batch_tokens")
    return logged_run(llama_ft.from_pretrained("smollm2-135m", task="qa", seed=0), training_examples(steps),
                      {k: preset[k] for k in keys}, steps)


def logged_run(model, examples: list[dict], settings: dict, steps: int) -> dict:
    """In this process: `model` trained on `examples` under TrainConfig(**settings), one epoch of at most `steps`
    steps, compiled from the first; preset_run's figures from the step log."""
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(**settings, epochs=1, max_steps=steps, compile=True, output_dir=out, progress=False)
        start = time.perf_counter()
        res = train(model, examples, cfg)
        train_seconds = time.perf_counter() - start
        log = [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]
    timed = log[SKIP:]
    return {"step_seconds": [r["seconds"] for r in log], "step_tokens": [r["real_tokens"] for r in log],
            "real_tokens": sum(r["real_tokens"] for r in timed),
            "padded_tokens": sum(r["padded_tokens"] for r in timed),
            "seconds": sum(r["seconds"] for r in timed),
            "tokens_per_s": sum(r["real_tokens"] for r in timed) / sum(r["seconds"] for r in timed),
            "train_seconds": train_seconds, "compile": res.compile,
            "peak_rss_bytes": max(r["peak_memory"] for r in log)}


def kernel_seconds(verbose_log: str) -> float:
    """Seconds oneDNN spent building kernels it did not have (ONEDNN_VERBOSE=profile_create's cache misses)."""
    return sum(float(line.rsplit(",", 1)[1]) for line in verbose_log.splitlines()
               if "primitive,create:cache_miss" in line) / 1e3


def paired_ratios(rows: list[dict]) -> list[float]:
    """For each pair of consecutive runs of two settings: the other setting's tokens/s over the first entry's."""
    base = rows[0]["multiple"]
    pairs = [(a, b) if a["multiple"] == base else (b, a) for a, b in zip(rows[::2], rows[1::2])
             if a["multiple"] != b["multiple"]]
    return [other["tokens_per_s"] / first["tokens_per_s"] for first, other in pairs]


def child_run(cmd: list[str], what: str, env: dict | None = None) -> tuple[dict, str]:
    """Run a child process that prints its result as one `RESULT <json>` line: (that result, its whole stdout)."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    result = next((line for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"{what}: the run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(result[len("RESULT "):]), proc.stdout


def run_process(multiple: int, steps: int, threads: int | None) -> dict:
    env = {**os.environ, "ONEDNN_VERBOSE": "profile_create"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    row, stdout = child_run([sys.executable, __file__, "--one", str(multiple), "--steps", str(steps)],
                            f"multiple {multiple}", env)
    row["onednn_kernel_build_seconds"] = kernel_seconds(stdout)  # the whole run's, compiling steps included
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--order", type=int, nargs="+", default=[1, 16, 16, 1], help="one process per entry, in order")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # inside a child process: run this multiple
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.steps <= SKIP:
        ap.error(f"--steps {args.steps}: use {SKIP + 1} or more (the first {SKIP} compile).")
    if args.one is not None:
        print("RESULT " + json.dumps(one(args.one, args.steps)), flush=True)
        return 0
    rows = []
    for m in args.order:
        rows.append(run_process(m, args.steps, args.threads))
        r = rows[-1]
        print(f"multiple {m}: {r['tokens_per_s']:,.1f} tok/s, padded {r['padded_tokens']:,} for {r['real_tokens']:,} "
              f"real, oneDNN kernels {r['onednn_kernel_build_seconds']:.2f} s", flush=True)
    ratios = paired_ratios(rows)
    out = {"steps": args.steps, "timed_after_step": SKIP, "rows": rows,
           "paired_ratios_vs_first": ratios, "median_ratio": statistics.median(ratios) if ratios else None}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"\n| run | multiple | real tok/s (steps {SKIP + 1}+) | padding waste | oneDNN kernel builds, s |")
    print("|---:|---:|---:|---:|---:|")
    for i, r in enumerate(rows, 1):
        print(f"| {i} | {r['multiple']} | {r['tokens_per_s']:,.1f} | {1 - r['real_tokens'] / r['padded_tokens']:.2%} | "
              f"{r['onednn_kernel_build_seconds']:.2f} |")
    if ratios:
        print(f"\nother setting over the first entry's, per pair: {', '.join(f'{x:.3f}' for x in ratios)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
