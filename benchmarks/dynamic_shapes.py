"""Compiled CPU training with the blocks' lengths and batch sizes dynamic from the first compile
(llama_ft.train.compile.DYNAMIC), against torch's default (static shapes until a second one is seen), on real SQuAD
windows.

    python benchmarks/dynamic_shapes.py [--steps 10] [--order static dynamic dynamic static] [--cold] [--json out.json]

Each entry of --order is one process, run in that order so that a drift of the machine's speed reaches both
settings alike: the engine trains the embedded model with train_squad.py's default preset, compiled from the first
step (benchmarks/length_buckets.preset_run), with the setting as DYNAMIC["cpu"]. `--cold` gives each process an
empty inductor cache of its own (TORCHINDUCTOR_CACHE_DIR), as on a fresh machine; without it the processes share the
user's cache, as a second run does. Reported per process: the whole train() call's seconds (compilation
included), dynamo's frames, the steps' extra seconds over their tokens at the steady rate, real tokens/s over the
steps after the first two (the median of the steps' rates), and the peak resident memory. Consecutive runs form
pairs; each pair gives the ratio of static over dynamic train() seconds (above 1: dynamic is faster) and the median
of the steps' static over dynamic seconds.
The setting is internal to the engine (transformers has no counterpart), so no peer runs here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_ft.train.compile as compile_mod  # noqa: E402
from benchmarks.length_buckets import SKIP, child_run, preset_run  # noqa: E402

SETTINGS = {"static": None, "dynamic": True}  # DYNAMIC["cpu"] for each name


def steady_rate(row: dict) -> float:
    """The median of the steps' real tokens/s after the first SKIP: a step that recompiles does not move it."""
    return statistics.median(t / s for s, t in zip(row["step_seconds"][SKIP:], row["step_tokens"][SKIP:]))


def compile_seconds(row: dict) -> float:
    """The seconds the steps spent beyond what their real tokens take at the run's steady rate: the first compile,
    recompilations, and any step slower than the rest."""
    rate = steady_rate(row)
    return sum(max(0.0, s - t / rate) for s, t in zip(row["step_seconds"], row["step_tokens"]))


def one(setting: str, steps: int) -> dict:
    """In this process: the preset with DYNAMIC["cpu"] = the setting's value."""
    compile_mod.DYNAMIC = {**compile_mod.DYNAMIC, "cpu": SETTINGS[setting]}
    return {"setting": setting, **preset_run(steps)}


def run_process(setting: str, steps: int, cold: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="inductor_") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache} if cold else None
        row, _ = child_run([sys.executable, __file__, "--one", setting, "--steps", str(steps)], setting, env)
    row["cold_cache"] = cold
    return summarize(row)


def summarize(row: dict) -> dict:
    row["steady_tokens_per_s"] = steady_rate(row)
    row["extra_seconds"] = compile_seconds(row)
    return row


def paired_ratios(rows: list[dict]) -> list[dict]:
    """For each consecutive pair of runs in the two settings: static over dynamic train() seconds, and the median
    of the steps' static over dynamic seconds after the first SKIP (both settings see the same batches in the same
    order, so step i's ratio is a pair of its own, and the median leaves out a step that recompiled)."""
    pairs = [(a, b) if a["setting"] == "static" else (b, a) for a, b in zip(rows[::2], rows[1::2])
             if a["setting"] != b["setting"]]
    return [{"train_seconds_static_over_dynamic": s["train_seconds"] / d["train_seconds"],
             "median_step_static_over_dynamic": statistics.median(
                 a / b for a, b in zip(s["step_seconds"][SKIP:], d["step_seconds"][SKIP:]))} for s, d in pairs]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--order", nargs="+", choices=list(SETTINGS), default=["static", "dynamic", "dynamic", "static"],
                    help="one process per entry, in order")
    ap.add_argument("--cold", action="store_true", help="an empty inductor cache in each process (a fresh machine)")
    ap.add_argument("--one", choices=list(SETTINGS), help=argparse.SUPPRESS)  # inside a child process
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.steps <= SKIP:
        ap.error(f"--steps {args.steps}: use {SKIP + 1} or more (the steady rate is taken after the first {SKIP}).")
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.steps)), flush=True)
        return 0
    rows = []
    for setting in args.order:
        rows.append(run_process(setting, args.steps, args.cold))
        r = rows[-1]
        print(f"{setting}: train() {r['train_seconds']:.1f} s, {r['compile']['frames_compiled']} frames, "
              f"{r['tokens_per_s']:,.1f} tok/s after step {SKIP}", flush=True)
    out = {"steps": args.steps, "timed_after_step": SKIP, "cold_cache": args.cold, "rows": rows,
           "paired_ratios": paired_ratios(rows)}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    print(table(out))
    return 0


def table(out: dict) -> str:
    lines = [f"{out['steps']} steps of the SQuAD preset, {'an empty' if out['cold_cache'] else 'the shared'} "
             "inductor cache", "",
             f"| run | shapes | frames | train() s | extra s over the steady rate | steady real tok/s (median, steps "
             f"{SKIP + 1}+) | peak RSS GB |", "|---:|---|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(out["rows"], 1):
        lines.append(f"| {i} | {r['setting']} | {r['compile']['frames_compiled']} | {r['train_seconds']:.1f} | "
                     f"{r['extra_seconds']:.1f} | {r['steady_tokens_per_s']:,.1f} | {r['peak_rss_bytes'] / 1e9:.2f} |")
    for p in out["paired_ratios"]:
        lines.append(f"\nper pair, static over dynamic: train() seconds {p['train_seconds_static_over_dynamic']:.3f}, "
                     f"median step {p['median_step_static_over_dynamic']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
