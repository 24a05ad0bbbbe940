"""Compiled training over real SQuAD window lengths: recompilations, warm-up and step speed, with torch.compile's
`dynamic` left to torch (static until a second shape) and set to True, against eager, in the same run.

    python benchmarks/compile_shapes.py [--steps 12] [--threads 1] [--json out.json]

The engine (`llama_ft.train.train`, the recipe's SQuAD defaults: lora:16, micro-batch 8, global batch 32,
384 / 128 windows) trains the embedded model on the first steps x 32 training questions, each setting from the
same weights and batches. Prints JSON and a table: dynamo frames compiled, recompilations by reason, the
compiling steps' extra seconds, real tokens/s over the steps after the first, and the process's peak resident
memory so far (run one setting per process, `--settings X`, to compare memory).
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo

import llama_ft
import llama_ft.train.compile as compile_mod
from llama_ft.tasks.squad.data import load_squad
from llama_ft.tasks.squad.scoring import QuestionSet
from llama_ft.train import TrainConfig, train

TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad_v1.1" / "train-v1.1-rebuilt.json.zip"


def training_examples(steps: int) -> list[dict]:
    """The recipe's 384 / 128 training windows of the first steps x 32 + 64 SQuAD training questions."""
    tok = llama_ft.load_tokenizer("smollm2-135m")
    questions = load_squad(TRAIN).examples[:steps * 32 + 64]
    return QuestionSet("train", questions, tok, 384, 128, progress=False).training_examples()


def one(setting: str, examples: list[dict], steps: int) -> dict:
    """`setting`: eager, static-then-dynamic or dynamic, optionally `/cap=N` (TrainConfig.micro_batch_tokens)."""
    torch._dynamo.reset()
    mode, _, cap = setting.partition("/cap=")
    compile_mod.DYNAMIC = {**compile_mod.DYNAMIC, "cpu": {"static-then-dynamic": None, "dynamic": True}.get(mode)}
    model = llama_ft.from_pretrained("smollm2-135m", task="qa", seed=0)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(policy="lora:16", lr=5e-4, schedule="cosine", warmup_ratio=0.05, batch_size=8,
                          global_batch=32, micro_batch_tokens=int(cap) if cap else None, epochs=1,
                          max_steps=steps, compile=mode != "eager",
                          output_dir=out, progress=False)
        t = time.perf_counter()
        res = train(model, examples, cfg)
        wall = time.perf_counter() - t
        log = [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]
    steady = [r for r in log if r["step"] > 1]
    seconds = [r["seconds"] for r in log]
    median = sorted(seconds[1:])[len(seconds[1:]) // 2]
    return {"setting": setting, "wall_seconds": wall, "frames_compiled": (res.compile or {}).get("frames_compiled"),
            "losses": [r["loss"] for r in log], "step_seconds": seconds,
            "extra_seconds_over_median": sum(max(0.0, s - median) for s in seconds[1:]),
            "steady_tokens_per_s": sum(r["real_tokens"] for r in steady) / sum(r["seconds"] for r in steady),
            "median_step_seconds": median, "peak_rss_bytes": max(r["peak_memory"] for r in log)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--settings", nargs="+", default=["eager", "static-then-dynamic", "dynamic"])
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error(f"--steps {args.steps}: use 2 or more (the speed is measured over the steps after the first).")
    if args.threads:
        torch.set_num_threads(args.threads)
    examples = training_examples(args.steps)
    rows = []
    for setting in args.settings:
        counters = torch._dynamo.utils.counters
        counters.clear()
        row = one(setting, examples, args.steps)
        row["recompile_reasons"] = dict(counters.get("recompiles", {}))
        rows.append(row)
    res = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "steps": args.steps, "examples": len(examples), "rows": rows}
    print(json.dumps(res, indent=1, default=str))
    eager = next((r for r in rows if r["setting"] == "eager"), None)
    print(f"\n{args.steps} steps of 32 SQuAD windows (lora:16, micro-batch 8), {res['threads']} thread(s)\n")
    print("| setting | frames compiled | extra s in slow steps | median step s | tok/s (steps 2+) | vs eager | "
          "peak RSS GB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = r["steady_tokens_per_s"] / eager["steady_tokens_per_s"] if eager else float("nan")
        print(f"| {r['setting']} | {r['frames_compiled']} | {r['extra_seconds_over_median']:.0f} | "
              f"{r['median_step_seconds']:.1f} | {r['steady_tokens_per_s']:.0f} | {ratio:.2f} | "
              f"{r['peak_rss_bytes'] / 1e9:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
