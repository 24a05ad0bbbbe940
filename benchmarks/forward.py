"""Forward throughput of llama_ft vs transformers (same config, weights, batch, dtype, same run), and the
peak memory of loading a checkpoint.

    python benchmarks/forward.py [--quick] [--shapes smollm2-135m,llama-3.2-1b] [--compile] [--json out.json]

--compile adds a column: our decoder blocks compiled as the recipes' long inference passes compile them
(llama_ft.train.compile.InferenceCompiler: dynamic shapes), against transformers eager, as it is commonly run.
Each measurement alternates ours / transformers repetitions, so background load hits both alike; the
figure is the median over repetitions. Prints a table and JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import llama_ft


def hf_twin(ours, dtype, cls: str = "LlamaForCausalLM"):
    """transformers' `cls` (LlamaForCausalLM, LlamaForQuestionAnswering, ...) holding exactly our weights."""
    import transformers
    d = {k: v for k, v in ours.config.to_dict().items() if k != "architectures"}
    with torch.device("meta"):
        ref = getattr(transformers, cls)(transformers.LlamaConfig(**d))
    ref.load_state_dict(ours.state_dict(), strict=False, assign=True)
    if hasattr(ref, "lm_head") and ours.config.tie_word_embeddings:
        ref.lm_head.weight = ref.base_model.embed_tokens.weight
    # The rope buffer is not in the state dict: rebuild that module off the meta device.
    ref.base_model.rotary_emb = type(ref.base_model.rotary_emb)(config=ref.config)
    return ref.to(dtype).eval()


def time_forward(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def alternate(ours, ref, reps: int) -> tuple[float, float]:
    """Median seconds of `ours` and `ref`, run in turn `reps` times, so that background load hits both alike."""
    t_ours, t_ref = [], []
    for _ in range(reps):
        t_ours += time_forward(ours, 1)
        t_ref += time_forward(ref, 1)
    return statistics.median(t_ours), statistics.median(t_ref)


def bench_shape(shape: str, batch: int, seq: int, reps: int, modes: list[str], compiled: bool = False) -> list[dict]:
    cfg = llama_ft.LlamaConfig.from_pretrained(shape)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    rows = []
    for mode in modes:
        weights = torch.bfloat16 if mode == "bf16-weights" else torch.float32
        ours = llama_ft.random_model(cfg, "causal-lm", dtype=weights, seed=0).eval()
        ref = hf_twin(ours, weights)
        amp = mode != "fp32"

        def run(model, hf, amp=amp):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out = model(ids)
                return out.logits if hf else out
        # One warm-up each, and a check that both compute the same thing.
        a, b = run(ours, False).float(), run(ref, True).float()
        diff = (a - b).abs().max().item()
        o, r = alternate(lambda m=ours: run(m, False), lambda m=ref: run(m, True), reps)
        row = {"shape": shape, "mode": mode, "batch": batch, "seq": seq,
               "ours_tokens_per_s": batch * seq / o, "transformers_tokens_per_s": batch * seq / r,
               "ratio": r / o, "max_abs_logit_diff": diff, "reps": reps}
        if compiled:
            row.update(compiled_row(ours, lambda m=ours: run(m, False), lambda m=ref: run(m, True), a, batch * seq,
                                    reps))
        rows.append(row)
    return rows


def compiled_row(ours, run, run_ref, eager_logits: torch.Tensor, tokens: int, reps: int) -> dict:
    """Our blocks compiled (dynamic shapes, as InferenceCompiler does for a long pass) against transformers eager,
    alternating as above: warm-up, speed, agreement with our eager logits."""
    from llama_ft.train.compile import InferenceCompiler
    with InferenceCompiler(ours, True, total_tokens=0):
        t = time.perf_counter()
        c = run().float()
        warmup = time.perf_counter() - t
        o, r = alternate(run, run_ref, reps)
    return {"compiled_tokens_per_s": tokens / o, "compiled_ratio": r / o, "compile_warmup_s": warmup,
            "compiled_max_abs_logit_diff_vs_eager": (c - eager_logits).abs().max().item()}


PEAK_CODE = """
import json, llama_ft, llama_ft.sources.resolve, llama_ft.tokenizer
def hwm():  # VmHWM: the kernel's high-water mark of resident memory (ru_maxrss lags behind it)
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM'))
base = hwm()
m = llama_ft.from_pretrained({folder!r}, dtype={dtype!r})
n = sum(p.numel() * p.element_size() for p in m.parameters())
print(json.dumps({{'peak_growth_bytes': hwm() - base, 'model_bytes': n}}))
"""


def load_peak(folder: str, dtype: str) -> dict:
    """Peak resident-memory growth while loading `folder` into `dtype`, in a fresh process (imports done first)."""
    out = subprocess.run([sys.executable, "-c", PEAK_CODE.format(folder=str(folder), dtype=dtype)],
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    r.update(dtype=dtype, checkpoint=str(folder), ratio=r["peak_growth_bytes"] / r["model_bytes"])
    return r


def load_checkpoints(quick: bool) -> list[dict]:
    """The embedded model's folder (fp32 on disk) and, unless quick, a Llama-3.2-1B-shape bf16 export."""
    rows = [load_peak(llama_ft.resolve("smollm2-135m"), d) for d in ("float32", "bfloat16")]
    if not quick:
        with tempfile.TemporaryDirectory() as tmp:
            m = llama_ft.random_model(llama_ft.LlamaConfig.from_pretrained("llama-3.2-1b"), "causal-lm", dtype="bf16")
            llama_ft.save_pretrained(m, tmp, overwrite=True)
            del m
            rows += [load_peak(tmp, d) for d in ("bfloat16", "float32")]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batch, few repetitions (about a minute)")
    ap.add_argument("--shapes", default="smollm2-135m,llama-3.2-1b")
    ap.add_argument("--modes", default="fp32,bf16-autocast,bf16-weights",
                    help="fp32; bf16-autocast (fp32 weights); bf16-weights (bf16 weights + autocast)")
    ap.add_argument("--compile", action="store_true", help="add our compiled blocks (the recipes' long passes)")
    ap.add_argument("--json", help="also write the JSON here")
    args = ap.parse_args(argv)
    batch, seq, reps = (4, 128, 3) if args.quick else (8, 256, 5)
    rows = []
    for shape in args.shapes.split(","):
        rows += bench_shape(shape, batch, seq, reps, args.modes.split(","), args.compile)
    loads = load_checkpoints(args.quick)
    report = {"benchmark": "forward", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "rows": rows, "load": loads}
    print(json.dumps(report, indent=2))
    print("\n| shape | mode | batch x seq | llama_ft tok/s | transformers tok/s | ratio | max |logit diff| |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shape']} | {r['mode']} | {r['batch']}x{r['seq']} | {r['ours_tokens_per_s']:,.0f} | "
              f"{r['transformers_tokens_per_s']:,.0f} | {r['ratio']:.2f}x | {r['max_abs_logit_diff']:.2g} |")
    if args.compile:
        print("\n| shape | mode | batch x seq | llama_ft compiled tok/s | ratio to transformers eager | warm-up s | "
              "max |logit diff| to our eager |\n|---|---|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['shape']} | {r['mode']} | {r['batch']}x{r['seq']} | {r['compiled_tokens_per_s']:,.0f} | "
                  f"{r['compiled_ratio']:.2f}x | {r['compile_warmup_s']:.1f} | "
                  f"{r['compiled_max_abs_logit_diff_vs_eager']:.2g} |")
    print("\n| checkpoint | loaded as | model bytes | peak RSS growth | ratio |\n|---|---|---:|---:|---:|")
    for r in loads:
        print(f"| {Path(r['checkpoint']).name} | {r['dtype']} | {r['model_bytes']:,} | {r['peak_growth_bytes']:,} | "
              f"{r['ratio']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
