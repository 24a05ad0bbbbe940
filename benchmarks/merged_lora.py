"""The compiled `lora:16` training step as written or through merged weights (llama_ft/model/merged_lora.py), in
the same run, with `full` and with transformers + PEFT on the same batch.

    python benchmarks/merged_lora.py [--shapes 6x384 16x256] [--policy lora:16] [--steps 2] [--reps 6]
                                     [--threads 2] [--json out.json]
    python benchmarks/merged_lora.py --recipe [--order on off off on] [--recipe-steps 10] [--json out.json]

A training step of the engine (random SmolLM2-135M weights, or --shape's; classification head, bf16 autocast, frozen
weights bf16, fused AdamW), each decoder block compiled as TrainConfig.compile does. One LoRA model runs both
settings (a compiled block keeps a graph for each): "merged" holds the merged buffers (lora.MergedTraining) and
refreshes them after each optimizer step, as train() and the other benchmarks' stepper do, so its time includes
the refresh; "as written" holds none. A second model trains `full`, and the peer is transformers + PEFT with the
LoRA model's weights. They alternate `--reps` times, in an order that reverses each turn: median seconds of
`--steps` steps, and the median of the turns' paired ratios. glibc keeps freed pages, as in train(). Prints JSON
and a table. The merged path is taken with bf16 on a CPU with AMX only: elsewhere both settings run the same graph.

--recipe: train_squad.py's default preset through `llama_ft.train.train` (benchmarks/length_buckets.py's run: real
SQuAD windows, micro-batches of up to 2,560 tokens, 32 windows an optimizer step), one process per --order entry,
with MERGED_TRAINING on or off: real tokens/s over the steps after the compiling ones, and for each consecutive
pair, merged over as written, as tokens/s and as the median of the steps' ratios (both runs see the same batches).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.length_buckets import SKIP, child_run, preset_run  # noqa: E402
from benchmarks.run import add_turn_flags, batch_shapes, emit  # noqa: E402
from benchmarks.train_step import (compiled_cpu_row, hf_stepper, hf_twin, ours_stepper, paired,  # noqa: E402
                                   table, turns)
from llama_ft.heap import keep_freed_pages  # noqa: E402
from llama_ft.hf.loading import random_model  # noqa: E402
from llama_ft.model import lora  # noqa: E402
from llama_ft.model.lora import MergedTraining  # noqa: E402

SETTINGS = ("as written", "merged")


class Toggle:
    """The LoRA stepper's merged buffers (benchmarks/train_step.ours_stepper holds them as train() does), held or
    not; switching costs an attribute each, and a refresh when they come back."""

    def __init__(self, merged: MergedTraining):
        self.merged, self.adapters = merged, merged.adapters
        self.buffers = [(a, a.merged_weight, a.scaled_A, a.scaled_B) for a in self.adapters]
        self.on = True

    def set(self, on: bool) -> None:
        if on == self.on:
            return
        for a, *held in self.buffers:
            a.merged_weight, a.scaled_A, a.scaled_B = held if on else (None, None, None)
        self.merged.adapters = self.adapters if on else []  # the stepper's refresh: none while off
        if on:
            self.merged.refresh()  # the adapters changed since this setting last ran
        self.on = on


def bench(model_shape: str, shape: tuple[int, int], policy: str, steps: int, reps: int) -> dict:
    s, cfg, b, ours = compiled_cpu_row(model_shape, shape, policy, steps, reps)
    toggle = Toggle(ours.merged)

    def setting(on: bool):
        def step(b):
            toggle.set(on)
            return ours(b)  # its refresh follows the optimizer step, as in train()
        return step
    steps_of = {name: setting(name == "merged") for name in SETTINGS}
    steps_of["peer"] = hf_stepper(hf_twin(ours.model, cfg, policy, s), s)
    steps_of["full"] = ours_stepper(random_model(cfg, "classification", 2, dtype=torch.float32, device=s.device,
                                                 seed=0), "full", s, compile=True)
    # Warm-up (compilation of the backward graphs). The first setting's loss is the untrained model's, as the
    # peer's is (its own copy of the weights); the second setting's comes after a step.
    losses = {k: float(fn(b)) for k, fn in steps_of.items()}
    times = turns(steps_of, b, s)
    toggle.set(False)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = s.batch * s.seq
    return {"batch": s.batch, "seq": s.seq, "policy": policy, "merged_buffers": len(toggle.buffers),
            **{f"{k}_tok_s": tokens / v for k, v in med.items()},
            "merged_vs_as_written": paired(times, "merged", "as written"),
            **{f"{k}_vs_full": paired(times, k, "full") for k in SETTINGS},
            **{f"{k}_vs_peer": paired(times, k, "peer") for k in SETTINGS},
            "first_loss": losses["as written"], "peer_first_loss": losses["peer"],
            "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()}}


def recipe_process(on: bool, steps: int) -> dict:
    """One process: the SQuAD preset with MERGED_TRAINING = on (benchmarks/length_buckets.preset_run)."""
    row, _ = child_run([sys.executable, __file__, "--recipe-one", "on" if on else "off", "--recipe-steps", str(steps)],
                       f"merged {on}")
    return {"merged": on, **row}


def recipe_ratios(rows: list[dict]) -> tuple[list[float], list[float]]:
    """For each consecutive pair of runs in two settings: merged over as written, as tokens/s and as the median of
    the steps' ratios. Both settings see the same batches in the same order, so step i's ratio is a pair of its
    own, and the median leaves out a step that compiled in one process and not the other (an inductor cache
    miss)."""
    pairs = [(a, b) if b["merged"] else (b, a) for a, b in zip(rows[::2], rows[1::2]) if a["merged"] != b["merged"]]
    return ([m["tokens_per_s"] / w["tokens_per_s"] for w, m in pairs],
            [statistics.median(sw / sm for sw, sm in zip(w["step_seconds"][SKIP:], m["step_seconds"][SKIP:]))
             for w, m in pairs])


def recipe(order: list[str], steps: int, json_path: str | None) -> int:
    rows = []
    for entry in order:
        rows.append(recipe_process(entry == "on", steps))
        print(f"merged {entry}: {rows[-1]['tokens_per_s']:,.1f} tok/s", flush=True)
    ratios, step_ratios = recipe_ratios(rows)
    out = {**emit(rows, None), "steps": steps, "timed_after_step": SKIP, "paired_ratios": ratios,
           "median_step_ratios": step_ratios}
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(out, indent=1))
    print("\n| run | merged | real tok/s (steps 3+) | median step, s |\n|---:|---|---:|---:|")
    for i, r in enumerate(rows, 1):
        print(f"| {i} | {'on' if r['merged'] else 'off'} | {r['tokens_per_s']:,.1f} | "
              f"{statistics.median(r['step_seconds'][SKIP:]):.2f} |")
    print(f"\nmerged over as written, per pair: tokens/s {', '.join(f'{x:.3f}' for x in ratios)}; "
          f"median of the steps' ratios {', '.join(f'{x:.3f}' for x in step_ratios)}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="smollm2-135m", help="model shape (benchmarks/train_step.py's names)")
    ap.add_argument("--policy", default="lora:16")
    ap.add_argument("--shapes", nargs="+", default=["6x384", "16x256"], help="BATCHxSEQ")
    ap.add_argument("--recipe", action="store_true", help="the SQuAD preset's training, one process per --order entry")
    ap.add_argument("--order", nargs="+", choices=["on", "off"], default=["on", "off", "off", "on"])
    ap.add_argument("--recipe-steps", type=int, default=10)
    ap.add_argument("--recipe-one", choices=["on", "off"], help=argparse.SUPPRESS)  # a child process's setting
    add_turn_flags(ap)
    args = ap.parse_args(argv)
    if args.recipe_one:
        lora.MERGED_TRAINING = args.recipe_one == "on"
        print("RESULT " + json.dumps(preset_run(args.recipe_steps)), flush=True)
        return 0
    if args.recipe:
        return recipe(args.order, args.recipe_steps, args.json)
    shapes = batch_shapes(ap, args.shapes)
    torch.set_num_threads(args.threads)
    keep_freed_pages()  # as train() runs (process-wide: the peer too)
    rows = []
    for shape in shapes:
        rows.append(bench(args.shape, shape, args.policy, args.steps, args.reps))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    emit(rows, args.json)
    print(table(rows, ["policy", "batch", "seq", *[f"{k}_tok_s" for k in (*SETTINGS, "full", "peer")],
                       "merged_vs_as_written", *[f"{k}_vs_full" for k in SETTINGS],
                       *[f"{k}_vs_peer" for k in SETTINGS]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
