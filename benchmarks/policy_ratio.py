"""Training steps of two or more freezing policies (`lora:16` against `full` by default) in one process, in turns,
with their peers (transformers + PEFT for a LoRA policy, transformers for the others), and each policy's MFU.

    python benchmarks/policy_ratio.py [--policies lora:16 full] [--shapes 16x256 4x384] [--eager]
                                      [--steps 1] [--reps 6] [--threads 2] [--json out.json] [--smoke]
                                      [--kept-pages]

benchmarks/train_step.py times each policy against its peer, one policy after the other, so a host whose speed
drifts between them (2-core cloud machines do, by 1.5x within minutes) puts its drift into the ratio of two
policies. Here every model (ours under each policy, compiled as TrainConfig.compile does unless --eager, and each
policy's peer with the same weights) runs once per turn, in an order that reverses each turn, and each ratio is
the median of the turns' paired ratios. The step is llama_ft.train.train_step (random SmolLM2-135M weights,
classification head, bf16 autocast, frozen weights bf16, fused AdamW). MFU divides model FLOPs
(llama_ft.model.flops, attention over the whole square as benchmarks/mfu.py counts it) by the larger of the bf16
matmul peaks measured at the start and at the end of the run. Prints JSON and a table. --smoke: a few-MB model of
the same architecture and a small matmul peak, a check of the plumbing (tests/benchmarks).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import mfu  # noqa: E402
from benchmarks.run import add_turn_flags, batch_shapes, emit  # noqa: E402
from benchmarks.train_step import (Setting, batch, config, hf_stepper, hf_twin, ours_stepper,  # noqa: E402
                                   paired, release_memory, table, turns)
from llama_ft.heap import keep_freed_pages  # noqa: E402
from llama_ft.hf.loading import random_model  # noqa: E402


def bench(model: str, shape: tuple[int, int], policies: list[str], compiled: bool, steps: int, reps: int) -> dict:
    """One batch shape: tokens/s of every stepper, the paired ratios, and each policy's model TFLOP/s."""
    s = Setting(torch.device("cpu"), torch.bfloat16, shape[0], shape[1], steps, reps)
    cfg = config(model)
    b = batch(cfg, s.batch, s.seq, s.device)
    release_memory()
    torch._dynamo.reset()  # each shape starts with no graphs
    steppers = {}
    for policy in policies:
        ours = ours_stepper(random_model(cfg, "classification", 2, dtype=torch.float32, device=s.device, seed=0),
                            policy, s, compile=compiled)
        steppers[policy] = ours
        steppers[f"{policy} peer"] = hf_stepper(hf_twin(ours.model, cfg, policy, s), s)
    first = {k: float(st(b)) for k, st in steppers.items()}  # warm-up (compilation), from identical weights
    for st in steppers.values():
        st(b)
    times = turns(steppers, b, s)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = s.batch * s.seq
    row = {"batch": s.batch, "seq": s.seq, "compiled": compiled,
           **{f"{k} tok/s": round(tokens / v, 1) for k, v in med.items()}}
    for policy in policies:
        row[f"{policy} vs peer"] = round(paired(times, policy, f"{policy} peer"), 3)
        row[f"{policy} TFLOP/s"] = mfu.step_flops(cfg, policy, s.seq)["per_token"] * tokens / med[policy] / 1e12
        row[f"{policy} first loss diff"] = round(abs(first[policy] - first[f"{policy} peer"]), 5)
    base = policies[-1]
    for policy in policies[:-1]:
        row[f"{policy} vs {base}"] = round(paired(times, policy, base), 3)
    row["seconds"] = {k: [round(x, 3) for x in v] for k, v in times.items()}
    del steppers
    release_memory()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", nargs="+", default=["lora:16", "full"],
                    help="two or more; the last is the one the others are compared with")
    ap.add_argument("--shapes", nargs="+", default=["16x256", "4x384"], help="BATCHxSEQ")
    ap.add_argument("--eager", action="store_true", help="ours with eager blocks (default: compiled)")
    add_turn_flags(ap, steps=1)
    ap.add_argument("--smoke", action="store_true", help="a tiny model: a check of the plumbing, not a measurement")
    ap.add_argument("--kept-pages", action="store_true",
                    help="glibc keeps freed pages for the whole run (llama_ft.heap.keep_freed_pages, which train() "
                         "sets), the peers' steps included; default: glibc as a transformers run has it")
    args = ap.parse_args(argv)
    shapes = batch_shapes(ap, args.shapes)
    policies = list(dict.fromkeys(args.policies))
    if len(policies) < 2:
        ap.error(f"--policies {' '.join(args.policies)}: give two or more different policies to compare")
    if args.steps < 1 or args.reps < 1:
        ap.error("--steps and --reps: 1 or more")
    torch.set_num_threads(args.threads)
    # Process-wide, so the peers run under it too. Off, a peer's step faults its freed activations in anew, and
    # how much depends on glibc's adaptive thresholds, i.e. on what ran before: the peers' tok/s, and every ratio
    # to them, move with it; ours, compiled, hardly does (BENCHMARKS.md, session 30).
    kept = keep_freed_pages() if args.kept_pages else False
    cpu = torch.device("cpu")
    start = mfu.peaks(cpu, quick=False, smoke=args.smoke)
    rows = []
    for shape in shapes:
        rows.append(bench("tiny" if args.smoke else "smollm2-135m", shape, policies, not args.eager, args.steps,
                          args.reps))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    peaks = mfu.merge_peaks(start, mfu.peaks(cpu, quick=False, smoke=args.smoke))
    peak = peaks["mfu_peak"]["bf16"]
    for row in rows:
        row["bf16 peak TFLOP/s"] = round(peak / 1e12, 3)
        row["bf16 peak shape"] = "x".join(map(str, peaks["best_shape"]["bf16"]))
        row["kept pages"] = kept
        for policy in policies:
            row[f"{policy} MFU"] = round(row[f"{policy} TFLOP/s"] * 1e12 / peak, 4)
            row[f"{policy} TFLOP/s"] = round(row[f"{policy} TFLOP/s"], 4)
    emit(rows, args.json)
    cols = ["batch", "seq", *[f"{k} tok/s" for p in policies for k in (p, f"{p} peer")],
            *[f"{p} vs {policies[-1]}" for p in policies[:-1]], *[f"{p} vs peer" for p in policies],
            *[f"{p} MFU" for p in policies], "bf16 peak TFLOP/s", "kept pages"]
    print(table(rows, cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
