"""Right-padded batches under plain causal attention against the padding mask, in the same run, and transformers
on the same batches (llama_ft.model.llama.CAUSAL_FOR_RIGHT_PADDING).

    python benchmarks/right_padding.py [--passes squad-test sst2-trunk train] [--squad 250] [--sst2 4000]
                                       [--steps 10] [--reps 3] [--threads 2] [--json out.json]

The passes, as the recipes run them on the embedded model (benchmarks/inference_compile.py builds the first two):
- squad-test: predict over the windows of the first N test questions of the `--n 4000` study split, eager,
  batches of 32; transformers' LlamaForQuestionAnswering with the same weights scores the same batches (its
  padding mask, bf16 autocast) as the peer.
- sst2-trunk: the trunk cache of `last:4` over the first N SST-2 training sentences, eager, batches of 128.
- train: the engine on the recipe's SQuAD defaults (benchmarks/compile_shapes.py, compiled, micro-batches of
  1,536 tokens) for `--steps` steps, each setting in a process of its own with an empty inductor cache: dynamo
  frames, the compiling steps' seconds, real tokens/s and the losses.

The inference passes alternate the two settings `--reps` times in one process (median seconds) and compare
their outputs at the real positions. Prints JSON and a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_ft.model.llama as llama  # noqa: E402
from benchmarks.run import add_turn_flags  # noqa: E402

SETTINGS = {"mask": False, "causal": True}


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def squad_test(n: int, reps: int) -> dict:
    import llama_ft
    from benchmarks.forward import hf_twin
    from benchmarks.inference_compile import squad_test_windows
    from llama_ft.train import predict
    from llama_ft.train.batching import collate, sorted_batches

    windows = squad_test_windows(n)
    model = llama_ft.from_pretrained("smollm2-135m", task="qa", seed=0)
    peer = hf_twin(model, torch.float32, "LlamaForQuestionAnswering")  # fp32 weights, as predict's model
    pad = model.config.pad_token_id
    lengths = np.array([len(w["input_ids"]) for w in windows])
    batches = [collate([windows[i] for i in idx], pad) for idx in sorted_batches(lengths, 32)]

    @torch.inference_mode()
    def run_peer():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for b in batches:
                peer(input_ids=b["input_ids"], attention_mask=b["attention_mask"])

    seconds = {name: [] for name in [*SETTINGS, "transformers"]}
    outputs = {}
    for _ in range(reps):
        for name, on in SETTINGS.items():
            llama.CAUSAL_FOR_RIGHT_PADDING = on
            s, outputs[name] = timed(lambda: predict(model, windows, batch_size=32, compile=False))
            seconds[name].append(s)
        seconds["transformers"].append(timed(run_peer)[0])
    diff = max(float((a - b).abs().max()) for x, y in zip(outputs["mask"], outputs["causal"])
               for a, b in zip(x, y))
    padded = sum(int(b["attention_mask"].shape[1]) * len(b["attention_mask"]) for b in batches)
    real = sum(len(w["input_ids"]) for w in windows)
    return {"pass": "squad-test", "n": n, "windows": len(windows), "tokens": real,
            "padded_batches": sum(not bool(b["attention_mask"].all()) for b in batches), "batches": len(batches),
            "padding_share": 1 - real / padded, "seconds": seconds, "max_abs_diff_real_positions": diff}


def sst2_trunk(n: int, reps: int) -> dict:
    from benchmarks.inference_compile import sst2_trunk as build
    run, tokens = build(n)
    seconds = {name: [] for name in SETTINGS}
    for _ in range(reps):
        for name, on in SETTINGS.items():
            llama.CAUSAL_FOR_RIGHT_PADDING = on
            seconds[name].append(timed(lambda: run(False))[0])
    return {"pass": "sst2-trunk", "n": n, "tokens": tokens, "seconds": seconds}


def train_child(setting: str, steps: int) -> dict:
    """compile_shapes' engine run with the padding mask or without, in this process."""
    import torch._dynamo

    from benchmarks.compile_shapes import one, training_examples
    llama.CAUSAL_FOR_RIGHT_PADDING = SETTINGS[setting]
    examples = training_examples(steps)
    torch._dynamo.utils.counters.clear()
    return one("static-then-dynamic/cap=1536", examples, steps)


def train_pass(steps: int, threads: int) -> dict:
    rows = {}
    for setting in SETTINGS:
        with tempfile.TemporaryDirectory() as cache:
            cmd = [sys.executable, __file__, "--child", setting, "--steps", str(steps), "--threads", str(threads)]
            out = subprocess.run(cmd, env=dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache), capture_output=True,
                                 text=True)
        if out.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
        rows[setting] = json.loads(out.stdout.strip().splitlines()[-1])
    return {"pass": "train", "steps": steps, "runs": rows}


def table(results: list[dict]) -> str:
    lines = ["| pass | padding mask, s | plain causal, s | speed-up | transformers, s | ours / transformers |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        if r["pass"] == "train":
            m, c = r["runs"]["mask"], r["runs"]["causal"]
            tm, tc = m["steady_tokens_per_s"], c["steady_tokens_per_s"]
            lines.append(f"| train, {r['steps']} steps: tok/s after step 1 | {tm:.0f} | {tc:.0f} | {tc / tm:.2f} | | |")
            lines.append(f"| train: dynamo frames; s over the median step | {m['frames_compiled']}; "
                         f"{m['extra_seconds_over_median']:.0f} | {c['frames_compiled']}; "
                         f"{c['extra_seconds_over_median']:.0f} | | | |")
            continue
        med = {k: statistics.median(v) for k, v in r["seconds"].items()}
        peer = med.get("transformers")
        peer_cells = "| |" if peer is None else f"{peer:.1f} | {peer / med['causal']:.2f} |"
        lines.append(f"| {r['pass']} ({r['tokens']:,} tokens) | {med['mask']:.1f} | {med['causal']:.1f} | "
                     f"{med['mask'] / med['causal']:.2f} | {peer_cells}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", nargs="+", default=["squad-test", "sst2-trunk", "train"],
                    choices=["squad-test", "sst2-trunk", "train"])
    ap.add_argument("--squad", type=int, default=250)
    ap.add_argument("--sst2", type=int, default=4000)
    add_turn_flags(ap, steps=10, reps=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(train_child(args.child, args.steps)))
        return 0
    results = []
    for name in args.passes:
        if name == "squad-test":
            results.append(squad_test(args.squad, args.reps))
        elif name == "sst2-trunk":
            results.append(sst2_trunk(args.sst2, args.reps))
        else:
            results.append(train_pass(args.steps, args.threads))
    res = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__,
           "results": results}
    print(json.dumps(res, indent=1))
    print()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
