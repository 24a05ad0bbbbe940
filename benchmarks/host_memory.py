"""Peak resident memory and speed of the SQuAD recipe on a CPU, with and without handing freed heap pages back
(llama_ft.heap), each setting in a process of its own, in one run.

    python benchmarks/host_memory.py [--steps 30] [--settings trim glibc mmap trim/cap=1024 trim/micro trim/thp]
        [--threads N] [--json out.json]

Each setting runs `train_squad.py` with its defaults (lora:16, 384 / 128 windows, micro-batch 16 capped at 1,536
tokens in eager steps and 2,560 in compiled ones, global batch 32, compiled by `auto`) on `--n 1000 --test-size 100
--no-zero-shot --max-steps STEPS`:
- trim: llama_ft as shipped (malloc_trim after every long step and every prediction pass; between them glibc keeps
  what each batch frees, heap.keep_freed_pages);
- glibc: heap.TRIM and heap.KEEP_FREED_PAGES off, glibc's malloc as it is;
- mmap: heap.TRIM off and mallopt(M_MMAP_THRESHOLD, 128 KiB): every tensor above it a mapping of its own,
  unmapped when freed (no fragmentation, a page fault for every page of every new tensor);
- any of them with `/cap=N`: `--micro-batch-tokens N --compiled-micro-batch-tokens N` (one cap for every step);
- with `/bs=N`: `--batch-size N` windows per micro-batch instead of the recipe's 16 (the caps still apply);
- with `/budget=B`: llama_ft.train.compile.ACTIVATION_MEMORY_BUDGET["cpu"] = B for the compiled blocks (1.0:
  torch's default partitioning);
- with `/micro`: heap.EACH_MICRO_BATCH, a trim after every micro-batch's backward as well;
- with `/growth=MIB`: heap.STEP_GROWTH, a step trims once the resident set grew this many MiB (0: every step);
- with `/onednn=N`: ONEDNN_PRIMITIVE_CACHE_CAPACITY=N, oneDNN's cache of matmul kernels (one per shape) held at N
  shapes instead of llama_ft's bound (llama_ft.heap.ONEDNN_PRIMITIVE_CACHE; 1024 is oneDNN's own default);
- with `/untuned`: heap.KEEP_FREED_PAGES off: glibc's own mmap and trim thresholds (llama_ft before session 28);
- with `/thp`: THP_MEM_ALLOC_ENABLE=1, torch's CPU allocator asks for transparent huge pages (2 MiB) for tensors
  of 2 MiB and more (one page fault per 2 MiB instead of per 4 KiB).
Prints JSON and a table: the process's peak resident set (VmHWM, metrics.json), resident memory after the first
and the last step, real tokens/s over the steps after the second (so compilation is out of it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT.parent / "shared" / "data" / "squad_v1.1" / "train-v1.1-rebuilt.json.zip"
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
HEAPS = ("trim", "glibc", "mmap")
CHILD = """
import ctypes, runpy, sys
import llama_ft.heap
setting = sys.argv[1]
llama_ft.heap.TRIM = setting == "trim"
flags = sys.argv.pop(2).split(",")
llama_ft.heap.EACH_MICRO_BATCH = "micro" in flags
llama_ft.heap.KEEP_FREED_PAGES = setting == "trim" and "untuned" not in flags  # glibc, mmap: malloc as set
growth = sys.argv.pop(2)
budget = sys.argv.pop(2)
if budget != "-":
    import llama_ft.train.compile
    llama_ft.train.compile.ACTIVATION_MEMORY_BUDGET["cpu"] = float(budget)
if growth != "-":
    llama_ft.heap.STEP_GROWTH = int(growth) * 2**20
if setting == "mmap":
    ctypes.CDLL("libc.so.6").mallopt({param}, 128 * 1024)
sys.argv = ["train_squad.py"] + sys.argv[2:]
runpy.run_path({recipe!r}, run_name="__main__")
"""


def one(setting: str, steps: int, threads: int | None, data: Path, compile_flag: str | None = None) -> dict:
    heap, *mods = setting.split("/")
    opts = dict(m.split("=", 1) for m in mods if "=" in m)
    flags = {m for m in mods if "=" not in m}
    if heap not in HEAPS or not flags <= {"micro", "thp", "untuned"} or not opts.keys() <= {"cap", "bs", "budget",
                                                                                              "onednn", "growth"}:
        raise SystemExit(f"--settings {setting}: use trim, glibc or mmap, optionally with /cap=TOKENS, /bs=WINDOWS, "
                         "/budget=B, /onednn=SHAPES, /growth=MIB, /micro, /untuned, /thp")
    cap, windows, kernels = opts.get("cap"), opts.get("bs"), opts.get("onednn")
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
               **({"THP_MEM_ALLOC_ENABLE": "1"} if "thp" in flags else {}),
               **({"ONEDNN_PRIMITIVE_CACHE_CAPACITY": kernels} if kernels else {})}
        cmd = [sys.executable, "-c", CHILD.format(param=M_MMAP_THRESHOLD, recipe=str(ROOT / "train_squad.py")),
               heap, ",".join(sorted(flags)) or "-", opts.get("growth", "-"), opts.get("budget", "-"),
               *(["--micro-batch-tokens", cap, "--compiled-micro-batch-tokens", cap] if cap else []),
               *(["--batch-size", windows] if windows else []),
               "--n", "1000", "--test-size", "100",
               "--no-zero-shot", "--max-steps", str(steps), *([compile_flag] if compile_flag else []),
               "--model", "smollm2-135m", "--data", str(data), "--output-dir", out, "--overwrite"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        run = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if run.returncode != 0:
            raise SystemExit(f"setting {setting}: train_squad.py failed:\n{run.stderr[-3000:]}")
        metrics = json.loads((Path(out) / "metrics.json").read_text())
        log = [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]
    steady = [r for r in log if r["step"] > 2]
    return {"setting": setting, "peak_rss_bytes": metrics["train"]["peak_memory_bytes"],
            "rss_after_steps": [r["memory"] for r in log],
            "steady_tokens_per_s": sum(r["real_tokens"] for r in steady) / sum(r["seconds"] for r in steady),
            "train_seconds": metrics["train"]["train_seconds"],
            # The whole process (loading, scoring, compiling included): page faults are paid in system time.
            "system_seconds": after.ru_stime - before.ru_stime, "minor_faults": after.ru_minflt - before.ru_minflt}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, help="OpenMP threads of each run (default: torch's)")
    ap.add_argument("--settings", nargs="+", default=list(HEAPS))
    ap.add_argument("--data", type=Path, default=TRAIN)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction,
                    help="pass --compile / --no-compile to the recipe (default: its `auto`, which leaves runs of "
                         "fewer than about 30 steps eager)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    flag = None if args.compile is None else ("--compile" if args.compile else "--no-compile")
    rows = [one(s, args.steps, args.threads, args.data, flag) for s in args.settings]
    res = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "steps": args.steps,
           "compile": flag or "auto", "rows": rows}
    print(json.dumps(res, indent=1))
    # The speed ratio is against glibc as it is when that setting ran, else against the first setting.
    base = next((r for r in rows if r["setting"] == "glibc"), rows[0])
    print(f"\n`train_squad.py --n 1000 --max-steps {args.steps} {flag or ''}` (lora:16), one process per setting\n")
    print(f"| setting | peak RSS GB | RSS after step 1 GB | after the last GB | tok/s (steps 3+) | speed vs "
          f"{base['setting']} | process system s | minor faults (M) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = r["steady_tokens_per_s"] / base["steady_tokens_per_s"]
        print(f"| {r['setting']} | {r['peak_rss_bytes'] / 1e9:.2f} | {r['rss_after_steps'][0] / 1e9:.2f} | "
              f"{r['rss_after_steps'][-1] / 1e9:.2f} | {r['steady_tokens_per_s']:.0f} | {ratio:.2f} | "
              f"{r['system_seconds']:.0f} | {r['minor_faults'] / 1e6:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
