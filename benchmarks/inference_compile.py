"""Compiled against eager inference passes on this machine: the speed-up and the warm-up that `compile="auto"`
weighs for predict and the trunk cache (llama_ft.train.compile.AUTO_MIN_INFERENCE_SECONDS).

    python benchmarks/inference_compile.py [--passes sst2-trunk squad-test] [--sst2 4000] [--squad 250]
                                           [--threads 2] [--json out.json]

The passes, as the recipes run them on the embedded model:
- sst2-trunk: the trunk cache of `last:4` (the frozen bottom in bf16, as train() stores it) over the first N SST-2
  training sentences, batches of 128 (what the SST-2 recipe's training starts with).
- squad-test: predict over the windows of the first N test questions of the `--n 4000` study split, batches of
  32, the model as train_squad.py's random-head row runs it (prepare_for_training under its default policy,
  `lora:16`: the frozen weights in bf16).

Each mode runs in a process of its own, one after the other: eager; compiled with an empty inductor cache (a
fresh machine); compiled again with the cache that run filled. Each process runs the pass twice: the second pass
reuses the first one's graphs and kernels, so it times the steady speed, and the first minus the second is the
warm-up. Prints JSON and a table: seconds of each pass, the speed-up of the compiled pass, and the eager seconds
a pass must last for compiling to repay each warm-up (warm-up x speed-up / (speed-up - 1); never when it is not
faster).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def sst2_trunk(n: int):
    """A function that fills the quickstart's trunk cache once, and the pass's real tokens."""
    import numpy as np

    import llama_ft
    from llama_ft.tasks.sst2.data import load_sst2
    from llama_ft.tasks.text.data import TextExample, encode
    from llama_ft.train import TrainConfig
    from llama_ft.train.loop import prepare_model
    from llama_ft.train.trunk import TrunkCache, find_split

    rows = load_sst2(DATA / "sst2")["train"][:n]
    examples = encode([TextExample(r.sentence, r.label) for r in rows], llama_ft.load_tokenizer("smollm2-135m"), 128)
    model = llama_ft.from_pretrained("smollm2-135m", task="classification", num_labels=2, seed=0)
    prepare_model(model, TrainConfig(policy="last:4"), torch.bfloat16, torch.device("cpu"))
    split, lengths = find_split(model), np.array([len(e["input_ids"]) for e in examples])

    def run(compile: bool) -> None:
        TrunkCache(model, split, examples, lengths, batch_size=128, device=torch.device("cpu"),
                   amp_dtype=torch.bfloat16, dtype=torch.bfloat16, ram_bytes=2**40, tmp_dir=None, compile=compile)
    return run, int(lengths.sum())


def squad_test_windows(n: int) -> list[dict]:
    """The windows of the first `n` test questions of the `--n 4000` study split, as predict takes them."""
    import llama_ft
    from llama_ft.tasks.squad.data import load_squad, study_split
    from llama_ft.tasks.squad.scoring import QuestionSet

    test = study_split(load_squad(DATA / "squad_v1.1" / "train-v1.1-rebuilt.json.zip").examples, 4000)[1][:n]
    tokenizer = llama_ft.load_tokenizer("smollm2-135m")
    return [w.as_example() for w in QuestionSet("test", test, tokenizer, progress=False).windows]


def squad_test(n: int):
    """A function that scores the random-head row's windows once, and the pass's real tokens."""
    import llama_ft
    from llama_ft.train import TrainConfig, predict, prepare_for_training

    windows = squad_test_windows(n)
    model = llama_ft.from_pretrained("smollm2-135m", task="qa", seed=0)
    # As train_squad.py's random-head row runs it: the default policy applied, the frozen weights in bf16.
    prepare_for_training(model, TrainConfig(policy="lora:16", device="cpu"))

    def run(compile: bool) -> None:
        predict(model, windows, batch_size=32, compile=compile)
    return run, sum(len(w["input_ids"]) for w in windows)


PASSES = {"sst2-trunk": sst2_trunk, "squad-test": squad_test}


def child(name: str, n: int, compile: bool, threads: int) -> dict:
    """Two passes in this process: (first seconds, second seconds, tokens)."""
    torch.set_num_threads(threads)
    run, tokens = PASSES[name](n)
    seconds = []
    for _ in range(2):
        t = time.perf_counter()
        run(compile)
        seconds.append(time.perf_counter() - t)
    return {"first_seconds": seconds[0], "second_seconds": seconds[1], "tokens": tokens}


def in_process(name: str, n: int, compile: bool, threads: int, cache_dir: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir)
    cmd = [sys.executable, __file__, "--child", name, str(n), str(int(compile)), "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def break_even(warmup: float, speedup: float) -> float:
    """Eager seconds a pass must last for compiling to repay `warmup` at `speedup`."""
    return warmup * speedup / (speedup - 1) if speedup > 1 else math.inf


def measure(name: str, n: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        runs = {mode: in_process(name, n, compile, threads, cache)
                for mode, compile in (("eager", False), ("compiled, empty cache", True),
                                      ("compiled, filled cache", True))}
    eager = runs["eager"]["second_seconds"]
    compiled = runs["compiled, filled cache"]["second_seconds"]
    speedup = eager / compiled
    row = {"pass": name, "n": n, "tokens": runs["eager"]["tokens"], "runs": runs, "speedup": speedup}
    for mode in ("compiled, empty cache", "compiled, filled cache"):
        warmup = runs[mode]["first_seconds"] - runs[mode]["second_seconds"]
        row[f"warmup {mode}"] = warmup
        row[f"break-even {mode}"] = break_even(warmup, speedup)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", nargs="+", choices=list(PASSES), default=list(PASSES))
    ap.add_argument("--sst2", type=int, default=4000, help="SST-2 training sentences in the trunk cache pass")
    ap.add_argument("--squad", type=int, default=250, help="test questions in the SQuAD scoring pass")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        name, n, compile = args.child
        print(json.dumps(child(name, int(n), bool(int(compile)), args.threads)))
        return 0
    from benchmarks.run import machine  # the parent alone: it imports the other benchmarks
    sizes = {"sst2-trunk": args.sst2, "squad-test": args.squad}
    rows = [measure(name, sizes[name], args.threads) for name in args.passes]
    res = {"machine": machine(torch.device("cpu")), "threads": args.threads, "rows": rows}
    print(json.dumps(res, indent=1, default=str))
    print(f"\n{res['machine'].get('cpu')}, bf16 flags {res['machine'].get('cpu_bf16_flags')}, {args.threads} "
          "thread(s); seconds of the first / second pass in each process\n")
    print("| pass | tokens | eager | compiled, empty cache | compiled, filled cache | speed-up | warm-up empty / "
          "filled | break-even eager s, empty / filled |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [f"{r['runs'][m]['first_seconds']:.1f} / {r['runs'][m]['second_seconds']:.1f}"
                 for m in ("eager", "compiled, empty cache", "compiled, filled cache")]
        print(f"| {r['pass']} ({r['n']:,}) | {r['tokens']:,} | {' | '.join(cells)} | {r['speedup']:.2f} | "
              f"{r['warmup compiled, empty cache']:.1f} / {r['warmup compiled, filled cache']:.1f} | "
              f"{r['break-even compiled, empty cache']:.0f} / {r['break-even compiled, filled cache']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
