"""The benchmark suite: training and eval tokens/s against transformers, MFU, cost curves, end-to-end runs.

    python -m benchmarks --quick                   # CPU, one thread, under 5 minutes on this 2-core machine
    python -m benchmarks --threads 1               # CPU, full sizes (about 30 minutes)
    python -m benchmarks --device cuda --out DIR   # one GPU, bf16 and fp16 autocast, under 10 minutes on an H100
    python -m benchmarks --smoke                   # the tiny model through every section (a test of the suite)

Writes DIR/results.json (after every row, so a killed run keeps what it measured) and DIR/*.png, and prints
markdown tables. Sections (--sections): steps (per-policy step and eval tokens/s, ours vs transformers, memory,
MFU), mfu (matmul peaks; `full` MFU across sizes), curves (cost curves, padding waste), e2e (recipe runs).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

from llama_ft.train.config import resolve_amp

from . import curves, e2e, mfu
from .train_step import (
    AMP_NAMES,
    POLICIES,
    Setting,
    batch,
    bench_policy,
    config,
    ours_stepper,
    release_memory,
    table,
    timed,
)

AMPS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}  # fp32: no autocast (TrainConfig amp "none")

# Sizes per mode. amps: the autocast dtypes measured ("auto": the one TrainConfig(amp="auto") trains in there);
# steps: shape -> (batch, seq, steps per repetition, repetitions, policies or None for all, the "as commonly run"
# column); mfu: `full` (shape, batch, seq) sizes, ours alone; then the cost curves.
PLANS = {
    "cpu-quick": {
        "amps": ["auto"], "threads": 1,
        "steps": {"smollm2-135m": (2, 128, 1, 3, None, True), "llama-3.2-1b": (1, 64, 1, 2, ["head", "last:4"], False)},
        "mfu": [("smollm2-135m", 1, 256)], "mfu_reps": 2,
        "layers": {"shape": "smollm2-135m", "ks": [0, 1, 4, 16], "n": 16, "seq": 64, "batch": 8},
        "seq": {"shape": "smollm2-135m", "seqs": [32, 64, 128], "n": 8, "batch": 8},
        "size": {"shape": "smollm2-135m", "ns": [8, 16, 32], "seq": 64, "batch": 8},
        "grouping": {"shape": "smollm2-135m", "n": 64, "batch": 16}},
    "cpu-full": {
        "amps": ["auto"], "threads": None,
        "steps": {"smollm2-135m": (8, 256, 1, 3, None, True), "llama-3.2-1b": (4, 128, 1, 3, None, False)},
        "mfu": [("smollm2-135m", 4, 256), ("smollm2-135m", 8, 256), ("smollm2-135m", 4, 512)], "mfu_reps": 3,
        # Long CPU runs train compiled (TrainConfig.compile="auto"), so that MFU is the one a run gets.
        "mfu_compiled": [("smollm2-135m", 16, 256), ("smollm2-135m", 4, 384)],
        "layers": {"shape": "smollm2-135m", "ks": [0, 1, 2, 4, 8, 16, 29], "n": 32, "seq": 128, "batch": 16},
        "seq": {"shape": "smollm2-135m", "seqs": [32, 64, 128, 256, 512], "n": 16, "batch": 16},
        "size": {"shape": "smollm2-135m", "ns": [16, 32, 64, 128], "seq": 128, "batch": 16},
        "grouping": {"shape": "smollm2-135m", "n": 512, "batch": 32}},
    "cuda": {
        "amps": ["bf16", "fp16"], "threads": None,
        "steps": {"smollm2-135m": (16, 512, 3, 5, None, True), "llama-3.2-1b": (8, 1024, 3, 5, None, True)},
        "mfu": [("llama-3.2-1b", 8, 1024), ("llama-3.2-1b", 4, 2048), ("llama-3.2-1b", 16, 1024),
                ("smollm2-135m", 32, 1024)], "mfu_reps": 5, "mfu_compiled": [("llama-3.2-1b", 8, 1024)],
        "layers": {"shape": "llama-3.2-1b", "ks": [0, 1, 2, 4, 8, 15, 16], "n": 256, "seq": 256, "batch": 32},
        "seq": {"shape": "llama-3.2-1b", "seqs": [128, 256, 512, 1024, 2048], "n": 64, "batch": 16},
        "size": {"shape": "llama-3.2-1b", "ns": [64, 128, 256, 512, 1024], "seq": 256, "batch": 32},
        "grouping": None},
    "smoke": {
        "amps": ["auto"], "threads": None, "steps": {"tiny": (2, 32, 1, 2, None, True)}, "mfu": [("tiny", 2, 64)],
        "mfu_reps": 1, "mfu_compiled": [("tiny", 2, 64)],
        "layers": {"shape": "tiny", "ks": [0, 1, 4], "n": 8, "seq": 16, "batch": 4},
        "seq": {"shape": "tiny", "seqs": [8, 16], "n": 8, "batch": 4, "policy": "last:2"},
        "size": {"shape": "tiny", "ns": [8, 16], "seq": 16, "batch": 4, "policy": "last:2"},
        "grouping": {"shape": "tiny", "n": 32, "batch": 8, "policy": "last:2"}},
}


def plan_amps(planned: list[str], device: torch.device, amp: str = "auto") -> list[str]:
    """The autocast dtype names to measure: --amp's, else the plan's, where "auto" is what a training run there
    computes in (resolve_amp: bf16 on a GPU and on a CPU with bf16 dot products, fp32 on any other CPU, where a
    bf16 step is up to 30x slower and comparing two bf16 paths would say nothing about a real run)."""
    names = planned if amp == "auto" else [amp]
    auto = AMP_NAMES[resolve_amp("auto", device)]
    return list(dict.fromkeys(auto if a == "auto" else a for a in names))


def add_turn_flags(ap: argparse.ArgumentParser, steps: int = 2, reps: int = 6) -> None:
    """The flags of a benchmark that times settings in turns: --steps per turn, --reps turns, --threads, --json."""
    ap.add_argument("--steps", type=int, default=steps, help="steps per timed turn")
    ap.add_argument("--reps", type=int, default=reps, help="turns")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the result here")


def batch_shapes(ap: argparse.ArgumentParser, specs: list[str]) -> list[tuple[int, int]]:
    """`--shapes` values such as 4x384 -> [(batch, seq)]; anything else is the parser's error."""
    shapes = []
    for spec in specs:
        try:
            bsz, seq = (int(v) for v in spec.lower().split("x"))
        except ValueError:
            ap.error(f"--shapes {spec}: expected BATCHxSEQ, e.g. 4x384")
        shapes.append((bsz, seq))
    return shapes


def emit(rows: list[dict], path: str | None) -> dict:
    """The rows with this machine's description: printed as JSON, and written to `path` when given."""
    out = {"machine": machine(torch.device("cpu")), "rows": rows}
    print(json.dumps(out, indent=1))
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=1))
    return out


def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    try:
        cpu = Path("/proc/cpuinfo").read_text()
        names = (ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("model name"))
        info["cpu"] = next(names, None)
        flags = next((ln for ln in cpu.splitlines() if ln.startswith("flags")), "")
        info["cpu_bf16_flags"] = sorted({f for f in flags.split() if "bf16" in f or f.startswith("amx")})
    except OSError:
        pass
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                       "multiprocessors": p.multi_processor_count, "cuda": torch.version.cuda}
    return info


class Suite:
    """Runs the sections, keeps the results, rewrites results.json after every row."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.plan = PLANS["smoke" if args.smoke else "cuda" if self.device.type == "cuda"
                          else "cpu-quick" if args.quick else "cpu-full"]
        self.amps = plan_amps(self.plan["amps"], self.device, args.amp)
        self.amp = self.amps[0]  # the dtype of the MFU sweep and the curves
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self.res: dict = {"command": "python " + " ".join(sys.argv), "mode": next(k for k, v in PLANS.items()
                                                                           if v is self.plan),
                          "amps": self.amps, "machine": machine(self.device), "errors": [], "skipped": []}

    def save(self) -> None:
        self.res["seconds"] = round(time.perf_counter() - self.t0, 1)
        tmp = self.out / ".results.json.tmp"
        tmp.write_text(json.dumps(self.res, indent=2, default=str))
        tmp.replace(self.out / "results.json")

    def over_budget(self, what: str) -> bool:
        if self.args.budget_s and time.perf_counter() - self.t0 > self.args.budget_s:
            self.res["skipped"].append(f"{what} (over the {self.args.budget_s} s budget)")
            return True
        return False

    def guarded(self, name: str, fn, *a, **kw):
        """Run fn; an exception is recorded (and printed) instead of ending the suite."""
        try:
            return fn(*a, **kw)
        except Exception as e:  # noqa: BLE001 (a benchmark run must report what it could measure)
            import traceback
            traceback.print_exc()
            self.res["errors"].append(f"{name}: {type(e).__name__}: {e}")
            release_memory()
            return None

    def log(self, obj) -> None:
        print(json.dumps(obj, default=str), file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------------ sections
    def peaks(self) -> None:
        self.res["peaks"] = mfu.peaks(self.device, quick=self.args.quick, smoke=self.args.smoke)
        self.log(self.res["peaks"])
        self.save()

    def mfu_of(self, shape: str, policy: str, seq: int, tok_s: float | None, amp: str) -> float | None:
        if not tok_s or "peaks" not in self.res:
            return None
        flops = mfu.step_flops(config(shape), policy, seq)["per_token"]
        return round(flops * tok_s / self.res["peaks"]["mfu_peak"][amp], 4)

    def remeasure_peaks(self) -> None:
        """Measure the peaks again at the end; MFU everywhere divides by the higher of the two."""
        if "peaks" not in self.res:
            return
        end = mfu.peaks(self.device, quick=self.args.quick, smoke=self.args.smoke)
        self.res["peaks_start"], self.res["peaks_end"] = self.res["peaks"]["measured"], end["measured"]
        self.res["peaks"] = mfu.merge_peaks(self.res["peaks"], end)
        self.add_mfu()

    def add_mfu(self) -> None:
        for row in self.res.get("steps", []):
            for k in ("ours", "hf", "hf_common"):
                m = self.mfu_of(row["shape"], row["policy"], row["seq"], row.get(f"{k}_tok_s"), row["amp"])
                if m is not None:
                    row[f"{k}_mfu"] = m
        for row in self.res.get("mfu", []):
            cfg, tok_s = config(row["shape"]), row["ours_tok_s"]
            peak = self.res["peaks"]["mfu_peak"][row["amp"]]
            f = mfu.step_flops(cfg, "full", row["seq"])["per_token"]
            fc = mfu.step_flops(cfg, "full", row["seq"], causal=True)["per_token"]
            row.update(tflops=round(f * tok_s / 1e12, 3), mfu=round(f * tok_s / peak, 4),
                       mfu_causal_count=round(fc * tok_s / peak, 4),
                       of_measured_matmul=round(f * tok_s / self.res["peaks"]["measured"][row["amp"]], 4))

    def steps(self, amps: list[str]) -> None:
        rows = self.res.setdefault("steps", [])
        policies = self.args.policies.split(",")
        for amp_name in amps:
            amp = AMPS[amp_name]
            for shape, (b, t, n, reps, only, common) in self.plan["steps"].items():
                s = Setting(self.device, amp, b, t, n, reps, common=common and not self.args.no_common)
                for policy in [p for p in policies if only is None or p in only]:
                    if self.over_budget(f"steps {shape} {policy} {amp_name}"):
                        return
                    if shape == "llama-3.2-1b" and policy == "full" and self.device.type == "cpu":
                        self.res["skipped"].append("llama-3.2-1b full on CPU: ~20 GiB of fp32 AdamW per model, "
                                                   "two do not fit in 24 GiB (benchmarks/train_step.py --full-1b)")
                        continue
                    row = self.guarded(f"steps {shape} {policy} {amp_name}", bench_policy, shape, policy, s,
                                       with_hf=not self.args.no_hf, with_eval=policy == "head")
                    if row is None:
                        continue
                    rows.append(row)
                    self.add_mfu()
                    self.log(row)
                    self.save()

    def mfu_sweep(self, compiled: bool = False) -> None:
        """Ours alone, policy `full`, at the plan's sizes (in self.amp); `compiled`: TrainConfig(compile=True), at the
        plan's `mfu_compiled` sizes (run last: compiling takes a while and must not crowd out the rest)."""
        rows = self.res.setdefault("mfu", [])
        amp = AMPS[self.amp]
        for shape, b, t in self.plan["mfu_compiled" if compiled else "mfu"]:
            what = f"mfu {shape} {b}x{t}" + (" compiled" if compiled else "")
            if self.over_budget(what):
                return
            row = self.guarded(what, self._full_step, shape, b, t, amp, compiled)
            if row is not None:
                rows.append(row)
                self.add_mfu()
                self.log(row)
                self.save()

    def _full_step(self, shape: str, b: int, t: int, amp: torch.dtype, compiled: bool = False) -> dict:
        from llama_ft.hf.loading import random_model
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        s = Setting(self.device, amp, b, t, steps=2 if self.device.type == "cuda" else 1,
                    reps=self.plan["mfu_reps"])
        cfg = config(shape)
        release_memory()
        step = ours_stepper(random_model(cfg, "classification", 2, dtype=torch.float32, device=self.device), "full", s,
                            compile=compiled)
        bt = batch(cfg, b, t, self.device)
        t0 = time.perf_counter()
        step(bt)  # warm-up; with `compiled`, the forward and backward graphs are built here
        warmup_s = time.perf_counter() - t0
        times = sorted(timed(step, bt, s.steps, self.device) for _ in range(s.reps))
        row = {"shape": shape, "policy": "full", "amp": AMP_NAMES[amp], "batch": b, "seq": t, "compiled": compiled,
               "ours_tok_s": round(b * t / times[len(times) // 2], 1)}
        if compiled:
            row["compile_s"] = round(warmup_s, 1)
        if self.device.type == "cuda":
            row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        del step
        release_memory()
        return row

    def curves(self) -> None:
        c = self.res.setdefault("curves", {})
        amp = "none" if self.amp == "fp32" else self.amp  # TrainConfig's spelling
        p = self.plan
        for key, fn, kw in (
                ("layers", curves.layers_curve, dict(p["layers"])),
                ("seq", curves.seq_curve, dict(p["seq"])),
                ("size", curves.size_curve, dict(p["size"]))):
            if self.over_budget(f"curve {key}"):
                break
            shape = kw.pop("shape")
            out = self.guarded(f"curve {key}", fn, shape, amp=amp, device=self.device, **kw)
            if out is not None:
                c[key] = out
                self.log({key: out})
                self.save()
        # Padding waste is a property of the data, not the device: the CPU run reports it.
        lengths = self.guarded("sst2 lengths", curves.sst2_lengths) if p.get("grouping") else None
        if lengths is not None:
            c["padding"] = curves.padding_table(lengths, [8, 16, 32, 64, 128])
            g = dict(p["grouping"])
            if not self.over_budget("grouping epochs"):
                c["grouping_epochs"] = self.guarded("grouping epochs", curves.grouping_epochs, g.pop("shape"),
                                                    lengths, amp=amp, device=self.device, **g)
        n = torch.get_num_threads()
        where = self.res["machine"].get("gpu", {}).get("name") or f"CPU, {n} thread{'s' * (n > 1)}"
        self.res["plots"] = curves.plot_all(c, self.out, where)
        self.save()

    def e2e(self) -> None:
        rows = self.res.setdefault("e2e", [])
        if self.args.e2e_smoke:
            rows += self.guarded("e2e smoke", e2e.smoke, self.out, self.args.threads) or []
        for folder in filter(None, (self.args.e2e_runs or "").split(",")):
            row = self.guarded(f"e2e {folder}", e2e.read_run, folder)
            if row is not None:
                rows.append(row)
        self.save()

    # -------------------------------------------------------------------------------------------- report
    def report(self) -> str:
        r, parts = self.res, []
        m = r["machine"]
        parts.append(f"mode {r['mode']}; {m.get('gpu', {}).get('name') or m.get('cpu')}; torch {m['torch']}, "
                     f"transformers {m.get('transformers')}; {m['threads']} threads; load average "
                     f"{m['load_avg_start'][0]:.2f} at start, {m.get('load_avg_end', [0])[0]:.2f} at end; "
                     f"{r.get('seconds')} s")
        if "peaks" in r:
            pk = r["peaks"]
            measured = ", ".join(f"{k} {v / 1e12:.3f}" for k, v in pk["measured"].items())
            divisor = {k: round(v / 1e12, 3) for k, v in pk["mfu_peak"].items()}
            parts.append(f"matmul peaks (TFLOP/s, best of (m, k, n) in {pk['matmul_shapes']}: "
                         f"{pk['best_shape']}; start and end of the run): {measured}; "
                         f"MFU divides by {pk['peak_source']} {divisor}")
        if r.get("steps"):
            parts.append(table(r["steps"], [
                "shape", "policy", "amp", "batch", "seq", "ours_tok_s", "hf_tok_s", "ratio", "hf_common_tok_s",
                "ratio_common", "ours_cache_tok_s", "ratio_cache", "ours_mfu", "hf_mfu", "ours_mem_gib",
                "hf_mem_gib", "hf_common_mem_gib", "first_loss_diff"]))
            ev = [x for x in r["steps"] if "eval_ours_tok_s" in x]
            if ev:
                parts.append(table(ev, ["shape", "amp", "batch", "seq", "eval_ours_tok_s", "eval_hf_tok_s",
                                        "eval_ratio", "eval_max_logit_diff"]))
        if r.get("mfu"):
            parts.append(table(r["mfu"], ["shape", "policy", "compiled", "amp", "batch", "seq", "ours_tok_s", "tflops",
                                          "mfu", "mfu_causal_count", "of_measured_matmul", "peak_mem_gib",
                                          "compile_s"]))
        c = r.get("curves", {})
        if c.get("layers"):
            rows = [{"policy": x["policy"], "no_cache_epoch2_s": x["no_cache"]["epoch2_s"],
                     "cache_epoch1_s": x.get("cache", {}).get("epoch1_s"),
                     "cache_epoch2_s": x.get("cache", {}).get("epoch2_s"), "speedup": x.get("speedup"),
                     "flop_ratio": x.get("flop_ratio"), "fraction_of_predicted": x.get("fraction_of_predicted")}
                    for x in c["layers"]]
            parts.append(table(rows, list(rows[0])))
        for key, xkey in (("seq", "seq"), ("size", "n")):
            if c.get(key):
                rows = [{xkey: x[xkey], "no_cache_epoch2_s": x["no_cache"]["epoch2_s"],
                         "no_cache_tok_s": x["no_cache"]["tok_s"], "cache_epoch2_s": x["cache"]["epoch2_s"],
                         "cache_tok_s": x["cache"]["tok_s"]} for x in c[key]]
                parts.append(table(rows, list(rows[0])))
        if c.get("padding"):
            parts.append(table(c["padding"], ["batch", "examples", "mean_len", "waste_shuffled", "waste_grouped"]))
        if c.get("grouping_epochs"):
            g = c["grouping_epochs"]
            parts.append(table([{"length_grouping": k, **g[k]} for k in ("grouped", "shuffled")],
                               ["length_grouping", "epoch1_s", "epoch2_s", "tok_s", "padding_waste"]))
        if r.get("e2e"):
            parts.append(table(r["e2e"], ["task", "model", "policy", "device", "train_examples", "wall_s",
                                          "process_wall_s", "train_s", "train_tok_s", "padding_waste", "run"]))
        for e in r["errors"]:
            parts.append(f"ERROR {e}")
        for sk in r["skipped"]:
            parts.append(f"skipped: {sk}")
        return "\n\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (CPU: under 5 minutes on 2 cores)")
    ap.add_argument("--smoke", action="store_true", help="a tiny model through every section (seconds)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--sections", default="steps,mfu,curves", help="comma list of steps, mfu, curves, e2e")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--no-hf", action="store_true", help="ours only (no transformers columns)")
    ap.add_argument("--no-common", action="store_true", help="skip the transformers 'as commonly run' column")
    ap.add_argument("--e2e-runs", help="comma list of recipe output folders to tabulate (section e2e)")
    ap.add_argument("--e2e-smoke", action="store_true", help="section e2e: run both recipes on a tiny slice")
    ap.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                    help="autocast dtype (default auto: the plan's; on CPU the dtype TrainConfig(amp='auto') trains "
                         "in, bf16 with bf16 dot products, else fp32)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    ap.add_argument("--budget-s", type=float, help="skip what is left once this many seconds have passed")
    ap.add_argument("--out", help="folder for results.json and the PNGs (default benchmarks/results/<mode>)")
    ap.add_argument("--replot", metavar="DIR", help="only redraw the PNGs from DIR/results.json")
    args = ap.parse_args(argv)
    if args.replot:
        res = json.loads((Path(args.replot) / "results.json").read_text())
        gpu = res["machine"].get("gpu", {}).get("name")
        n = res["machine"]["threads"]
        print("\n".join(curves.plot_all(res.get("curves", {}), Path(args.replot),
                                         gpu or f"CPU, {n} thread{'s' * (n > 1)}")))
        return 0
    if args.quick and args.threads is None:
        # On a shared 2-core machine two OpenMP threads spin against other jobs: one is faster and steadier.
        args.threads = PLANS["cpu-quick"]["threads"]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out is None:
        mode = "smoke" if args.smoke else "cuda" if args.device.startswith("cuda") else (
            "cpu-quick" if args.quick else "cpu-full")
        args.out = str(Path(__file__).resolve().parent / "results" / mode)
    if args.e2e_runs or args.e2e_smoke:
        args.sections += ",e2e" if "e2e" not in args.sections else ""
    suite = Suite(args)
    sections = args.sections.split(",")
    if "steps" in sections or "mfu" in sections:
        suite.guarded("peaks", suite.peaks)
    if "mfu" in sections:
        suite.mfu_sweep()
    # The first autocast dtype's rows come before the curves, any other (fp16 on CUDA) after them.
    first, *later = suite.amps
    if "steps" in sections:
        suite.steps([first])
    if "curves" in sections:
        suite.curves()
    if "steps" in sections and later:
        suite.steps(later)
    if "e2e" in sections:
        suite.e2e()
    if "mfu" in sections and suite.plan.get("mfu_compiled"):
        suite.mfu_sweep(compiled=True)
    if "steps" in sections or "mfu" in sections:
        suite.guarded("peaks at the end", suite.remeasure_peaks)
    suite.res["machine"]["load_avg_end"] = os.getloadavg()
    suite.save()
    print(suite.report())
    print(f"\nwrote {suite.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
