"""Compiled CPU training with the engine's shape settings (llama_ft.train.compile: DYNAMIC, lengths and batch sizes
dynamic from the first compile; DUCK_SHAPE, dynamo's duck sizing off) against torch's defaults, on real data.

    python benchmarks/dynamic_shapes.py [--steps 10] [--order static dynamic dynamic static] [--cold] [--json out.json]
    python benchmarks/dynamic_shapes.py --workload sst2-square --steps 40 --order duck dynamic dynamic duck

Settings: `dynamic` is the engine's; `static` has DYNAMIC["cpu"] at torch's default (static shapes until a second
one is seen); `duck` has dynamo's duck sizing on, as torch has it. Workloads: `squad`, train_squad.py's default
preset over the first steps x 32 training questions (benchmarks/length_buckets.preset_run); `sst2-square`, SST-2
training sentences under `last:4` (the trunk cache), batches of 16, with the first seed whose first batch is 16
sentences of 16 tokens (a square micro-batch, where duck sizing ties the batch size to the length).
Each entry of --order is one process, run in that order so that a drift of the machine's speed reaches both
settings alike, compiled from the first step. `--cold` gives each process an empty inductor cache of its own
(TORCHINDUCTOR_CACHE_DIR), as on a fresh machine; without it the processes share the user's cache, as a second run
does. Reported per process: the whole train() call's seconds (compilation included), dynamo's frames, the steps'
extra seconds over their tokens at the steady rate, real tokens/s over the steps after the first two (the median of
the steps' rates), and the peak resident memory. Consecutive runs of `dynamic` and another setting form pairs;
each pair gives the ratio of the other setting's train() seconds over dynamic's (above 1: the engine's is faster)
and the median of the steps' ratios.
The settings are internal to the engine (transformers has no counterpart), so no peer runs here.
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

import numpy as np  # noqa: E402

import llama_ft  # noqa: E402
import llama_ft.train.compile as compile_mod  # noqa: E402
from benchmarks.inference_compile import DATA  # noqa: E402
from benchmarks.length_buckets import SKIP, child_run, logged_run, preset_run  # noqa: E402
from llama_ft.train.batching import epoch_batches  # noqa: E402

# Each setting's departure from the engine's (compile.DYNAMIC["cpu"], compile.DUCK_SHAPE).
SETTINGS = {"static": {"dynamic": None}, "dynamic": {}, "duck": {"duck_shape": True}}
SQUARE = 16  # sst2-square's batch size, and its first batch's length


def steady_rate(row: dict) -> float:
    """The median of the steps' real tokens/s after the first SKIP: a step that recompiles does not move it."""
    return statistics.median(t / s for s, t in zip(row["step_seconds"][SKIP:], row["step_tokens"][SKIP:]))


def compile_seconds(row: dict) -> float:
    """The seconds the steps spent beyond what their real tokens take at the run's steady rate: the first compile,
    recompilations, and any step slower than the rest."""
    rate = steady_rate(row)
    return sum(max(0.0, s - t / rate) for s, t in zip(row["step_seconds"], row["step_tokens"]))


def sst2_square_run(steps: int) -> dict:
    """In this process: the sst2-square workload (the module's docstring) through logged_run."""
    from llama_ft.tasks.sst2.data import load_sst2
    from llama_ft.tasks.text.data import TextExample, encode

    rows = load_sst2(DATA / "sst2")["train"][:200 * SQUARE]
    examples = encode([TextExample(r.sentence, r.label) for r in rows], llama_ft.load_tokenizer("smollm2-135m"), 128)
    lengths = np.array([len(e["input_ids"]) for e in examples])
    seed = next(s for s in range(1000) if len(b := epoch_batches(lengths, SQUARE, s, 0)[0]) == SQUARE
                and int(lengths[b].max()) == SQUARE)
    model = llama_ft.from_pretrained("smollm2-135m", task="classification", num_labels=2, seed=0)
    return {"seed": seed, **logged_run(model, examples, {"policy": "last:4", "lr": 5.7e-4, "batch_size": SQUARE,
                                                         "seed": seed}, steps)}


WORKLOADS = {"squad": preset_run, "sst2-square": sst2_square_run}


def one(setting: str, steps: int, workload: str) -> dict:
    """In this process: the workload under the setting (SETTINGS)."""
    change = SETTINGS[setting]
    compile_mod.DYNAMIC = {**compile_mod.DYNAMIC, "cpu": change.get("dynamic", compile_mod.DYNAMIC["cpu"])}
    compile_mod.DUCK_SHAPE = change.get("duck_shape", compile_mod.DUCK_SHAPE)
    return {"setting": setting, "workload": workload, **WORKLOADS[workload](steps)}


def run_process(setting: str, steps: int, cold: bool, workload: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="inductor_") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache} if cold else None
        row, _ = child_run([sys.executable, __file__, "--one", setting, "--steps", str(steps),
                            "--workload", workload], setting, env)
    row["cold_cache"] = cold
    return summarize(row)


def summarize(row: dict) -> dict:
    row["steady_tokens_per_s"] = steady_rate(row)
    row["extra_seconds"] = compile_seconds(row)
    return row


def paired_ratios(rows: list[dict]) -> list[dict]:
    """For each consecutive pair of runs, `dynamic` and another setting: the other's train() seconds over
    dynamic's, and the median of the steps' other over dynamic seconds after the first SKIP (both settings see the
    same batches in the same order, so step i's ratio is a pair of its own, and the median leaves out a step that
    recompiled)."""
    pairs = [(b, a) if a["setting"] == "dynamic" else (a, b) for a, b in zip(rows[::2], rows[1::2])
             if a["setting"] != b["setting"] and "dynamic" in (a["setting"], b["setting"])]
    return [{"other": o["setting"], "train_seconds_other_over_dynamic": o["train_seconds"] / d["train_seconds"],
             "median_step_other_over_dynamic": statistics.median(
                 a / b for a, b in zip(o["step_seconds"][SKIP:], d["step_seconds"][SKIP:]))} for o, d in pairs]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--order", nargs="+", choices=list(SETTINGS), default=["static", "dynamic", "dynamic", "static"],
                    help="one process per entry, in order")
    ap.add_argument("--cold", action="store_true", help="an empty inductor cache in each process (a fresh machine)")
    ap.add_argument("--workload", choices=list(WORKLOADS), default="squad")
    ap.add_argument("--one", choices=list(SETTINGS), help=argparse.SUPPRESS)  # inside a child process
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.steps <= SKIP:
        ap.error(f"--steps {args.steps}: use {SKIP + 1} or more (the steady rate is taken after the first {SKIP}).")
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.steps, args.workload)), flush=True)
        return 0
    rows = []
    for setting in args.order:
        rows.append(run_process(setting, args.steps, args.cold, args.workload))
        r = rows[-1]
        print(f"{setting}: train() {r['train_seconds']:.1f} s, {r['compile']['frames_compiled']} frames, "
              f"{r['tokens_per_s']:,.1f} tok/s after step {SKIP}", flush=True)
    out = {"workload": args.workload, "steps": args.steps, "timed_after_step": SKIP, "cold_cache": args.cold,
           "rows": rows, "paired_ratios": paired_ratios(rows)}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    print(table(out))
    return 0


def table(out: dict) -> str:
    lines = [f"{out['steps']} steps of the {out['workload']} workload, "
             f"{'an empty' if out['cold_cache'] else 'the shared'} inductor cache", "",
             f"| run | shapes | frames | train() s | extra s over the steady rate | steady real tok/s (median, steps "
             f"{SKIP + 1}+) | peak RSS GB |", "|---:|---|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(out["rows"], 1):
        lines.append(f"| {i} | {r['setting']} | {r['compile']['frames_compiled']} | {r['train_seconds']:.1f} | "
                     f"{r['extra_seconds']:.1f} | {r['steady_tokens_per_s']:,.1f} | {r['peak_rss_bytes'] / 1e9:.2f} |")
    for p in out["paired_ratios"]:
        lines.append(f"\nper pair, {p['other']} over dynamic: train() seconds "
                     f"{p['train_seconds_other_over_dynamic']:.3f}, "
                     f"median step {p['median_step_other_over_dynamic']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
