"""Fused projections (llama_ft/model/fused.py: q/k/v and gate/up as one GEMM each) against one GEMM per
projection, in the same process with repetitions alternating: a `lora:16` and a `full` training step and an
inference forward of the SmolLM2-135M shape (random weights), bf16 autocast, eager and compiled.

    python benchmarks/fused_projections.py [--batch 8] [--seq 256] [--reps 5] [--threads 1] [--no-compile]

Prints JSON and a table: seconds per call, fused over separate (> 1: fusion faster), and the losses of both.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_ft  # noqa: E402
import llama_ft.model.fused as fused  # noqa: E402
from benchmarks.train_step import Setting, batch, config, eval_fn, ours_stepper, timed  # noqa: E402


def with_fuse(flag: bool, fn):
    def run(b):
        fused.FUSE = flag
        try:
            return fn(b)
        finally:
            fused.FUSE = True
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    s = Setting(device=torch.device("cpu"), amp=torch.bfloat16, batch=args.batch, seq=args.seq, steps=1,
                reps=args.reps)
    cfg = config("smollm2-135m")
    b = batch(cfg, args.batch, args.seq, s.device)
    rows = []
    for compiled in ([False] if args.no_compile else [False, True]):
        for what in ("lora:16", "full", "forward"):
            fns, losses = {}, {}
            for flag in (True, False):
                model = llama_ft.random_model(cfg, "classification", seed=0)
                if what == "forward":
                    model = model.to(torch.bfloat16).eval()
                    if compiled:
                        for layer in model.backbone.layers:
                            layer.compile()
                    fn = eval_fn(model, False, s)
                else:
                    fn = ours_stepper(model, what, s, compile=compiled)
                fns[flag] = with_fuse(flag, fn)
                out = fns[flag](b)   # warm-up (compiles)
                losses[flag] = float(out.float().sum()) if torch.is_tensor(out) else float(out)
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.reps):
                for flag in (True, False):
                    times[flag].append(timed(fns[flag], b, s.steps, s.device))
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"what": what, "compiled": compiled, "fused_s": med[True], "separate_s": med[False],
                         "speedup": med[False] / med[True], "first_output_fused": losses[True],
                         "first_output_separate": losses[False]})
    res = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "batch": args.batch, "seq": args.seq, "reps": args.reps, "rows": rows}
    print(json.dumps(res, indent=1))
    print(f"\nSmolLM2-135M shape, {args.batch} x {args.seq}, bf16 autocast, {res['threads']} thread(s), "
          f"median of {args.reps}\n")
    print("| what | compiled | fused s | separate s | speed-up | first output fused / separate |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['what']} | {'yes' if r['compiled'] else 'no'} | {r['fused_s']:.3f} | {r['separate_s']:.3f} | "
              f"{r['speedup']:.2f} | {r['first_output_fused']:.4f} / {r['first_output_separate']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
