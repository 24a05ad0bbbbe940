"""The recipes' CPU inference passes with glibc's malloc as it is and with llama_ft.heap.keep_freed_pages, each
setting in fresh processes, in turns whose order reverses each turn.

    python benchmarks/kept_pages.py [--passes squad-test squad-prompt sst2-trunk] [--squad 250] [--prompts 64]
                                    [--sst2 4000] [--compile] [--turns 2] [--threads 2] [--json out.json]

The passes, on the embedded model and real data (benchmarks/inference_compile.py builds the first and the last):
- squad-test: predict over the windows of the first N test questions of the `--n 4000` study split, batches of
  32, as train_squad.py's random-head row runs it;
- squad-prompt: the prompted zero-shot row's generation (answer_by_prompt) on the first N test questions;
- sst2-trunk: the SST-2 quickstart's trunk cache over the first N training sentences.
Settings: `glibc` (heap.KEEP_FREED_PAGES off: glibc's own mmap and trim thresholds, llama_ft before session 28)
and `kept` (as shipped). Each process runs its pass twice and times the second (the first compiles, when
`--compile`, and fills glibc's heap); it also counts the second pass's minor page faults and system seconds.
Prints JSON and a table: per setting the median seconds over the turns, faults, system seconds; and the median
of the turns' paired ratios glibc / kept.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.inference_compile import DATA, squad_test, sst2_trunk  # noqa: E402

SETTINGS = ("glibc", "kept")


def squad_prompt(n: int):
    """A function that runs the prompted zero-shot row's generation once, and the prompts' count."""
    import llama_ft
    from llama_ft.tasks.squad.data import load_squad, study_split
    from llama_ft.tasks.squad.zero_shot import answer_by_prompt

    test = study_split(load_squad(DATA / "squad_v1.1" / "train-v1.1-rebuilt.json.zip").examples, 4000)[1][:n]
    tokenizer = llama_ft.load_tokenizer("smollm2-135m")
    lm = llama_ft.from_pretrained("smollm2-135m", task="causal-lm")

    def run(compile: bool) -> None:  # generation decides its own compiling
        answer_by_prompt(lm, tokenizer, test, progress=False)
    return run, n


PASSES = {"squad-test": squad_test, "squad-prompt": squad_prompt, "sst2-trunk": sst2_trunk}


def child(setting: str, name: str, n: int, compile: bool, threads: int) -> dict:
    from llama_ft import heap

    heap.KEEP_FREED_PAGES = setting == "kept"
    torch.set_num_threads(threads)
    run, size = PASSES[name](n)
    run(compile)
    before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run(compile)
    seconds, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": seconds, "minor_faults": after.ru_minflt - before.ru_minflt,
            "system_seconds": after.ru_stime - before.ru_stime, "size": size}


def in_process(setting: str, name: str, n: int, compile: bool, threads: int, cache_dir: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir)
    cmd = [sys.executable, __file__, "--child", setting, name, str(n), str(int(compile)), "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(name: str, n: int, compile: bool, threads: int, turns: int) -> dict:
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory() as cache:  # shared: only the first process of all compiles from scratch
        for turn in range(turns):
            for setting in (SETTINGS if turn % 2 == 0 else SETTINGS[::-1]):
                runs[setting].append(in_process(setting, name, n, compile, threads, cache))
    ratios = [g["seconds"] / k["seconds"] for g, k in zip(runs["glibc"], runs["kept"])]
    return {"pass": name, "n": n, "compile": compile, "runs": runs, "glibc_over_kept": statistics.median(ratios),
            **{f"{s}_{key}": statistics.median(r[key] for r in runs[s]) for s in SETTINGS
               for key in ("seconds", "minor_faults", "system_seconds")}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", nargs="+", choices=list(PASSES), default=list(PASSES))
    ap.add_argument("--squad", type=int, default=250, help="test questions in the squad-test pass")
    ap.add_argument("--prompts", type=int, default=64, help="test questions in the squad-prompt pass")
    ap.add_argument("--sst2", type=int, default=4000, help="SST-2 training sentences in the sst2-trunk pass")
    ap.add_argument("--compile", action="store_true", help="compile the decoder blocks for predict and the trunk "
                                                           "cache (the recipes do so for long passes)")
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        setting, name, n, compile = args.child
        print(json.dumps(child(setting, name, int(n), bool(int(compile)), args.threads)))
        return 0
    from benchmarks.run import machine  # the parent alone: it imports the other benchmarks
    sizes = {"squad-test": args.squad, "squad-prompt": args.prompts, "sst2-trunk": args.sst2}
    rows = [measure(name, sizes[name], args.compile, args.threads, args.turns) for name in args.passes]
    res = {"machine": machine(torch.device("cpu")), "threads": args.threads, "turns": args.turns, "rows": rows}
    print(json.dumps(res, indent=1, default=str))
    print(f"\n{res['machine'].get('cpu')}, {args.threads} thread(s), {args.turns} turns; the second pass of each "
          "process, medians over the turns\n")
    print("| pass | glibc s | kept s | **glibc / kept** | minor faults glibc / kept | system s glibc / kept |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['pass']} ({r['n']:,}{', compiled' if r['compile'] else ''}) | {r['glibc_seconds']:.1f} | "
              f"{r['kept_seconds']:.1f} | **{r['glibc_over_kept']:.2f}** | "
              f"{r['glibc_minor_faults']:,.0f} / {r['kept_minor_faults']:,.0f} | "
              f"{r['glibc_system_seconds']:.1f} / {r['kept_system_seconds']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
