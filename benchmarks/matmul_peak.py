"""Which matmul reaches this machine's peak: the rate of the library's probe shapes, of square products and of the
decoder's own GEMMs, in one run, against the best of them.

    python benchmarks/matmul_peak.py [--shape smollm2-135m] [--tokens 4096] [--dtype bf16] [--reps 5] [--threads 2]
                                     [--json out.json]

MFU divides by a peak, and on a CPU that peak is measured, not read from a datasheet. The library's probe
(llama_ft.model.flops.CPU_PEAK_SHAPES) and the benchmark suite's (benchmarks/mfu.py) take the fastest of a few
shapes; this prints every shape's rate with its share of the best, so a probe that reads low on some CPU shows here.
The model's GEMMs: the projections' forward x W^T, input gradient dY W and weight gradient dY^T X (the summed token
dimension laid out contiguously, the narrower operand transposed, as llama_ft/model/linear.py runs it), over
--tokens tokens. Each rate is the fastest of --reps repetitions after two warm-ups.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run import emit  # noqa: E402
from benchmarks.train_step import config, table  # noqa: E402
from llama_ft.model.flops import CPU_PEAK_SHAPES, matmul_peak  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
SQUARES = (1024, 2048, 4096)


def model_gemms(shape: str, tokens: int) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, (m, k, n)) of the decoder's distinct projection GEMMs over `tokens` tokens."""
    cfg = config(shape)
    h, i = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    out = []
    for name, k, n in (("q/o", h, q), ("k/v", h, kv), ("gate/up", h, i), ("down", i, h)):
        out += [(f"{name} forward", (tokens, k, n)), (f"{name} input grad", (tokens, n, k)),
                (f"{name} weight grad", (min(n, k), tokens, max(n, k)))]
    names: dict[tuple[int, int, int], list[str]] = {}  # down's GEMMs are gate/up's, transposed
    for name, sh in out:
        names.setdefault(sh, []).append(name)
    return [(", ".join(v), sh) for sh, v in names.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="smollm2-135m", help="model shape (benchmarks/train_step.py's names)")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per GEMM of the model (batch x seq)")
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--squares", type=int, nargs="+", default=list(SQUARES))
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype, cpu = DTYPES[args.dtype], torch.device("cpu")
    cases = ([("library probe", sh) for sh in CPU_PEAK_SHAPES]
             + [("square", (n, n, n)) for n in args.squares if (n, n, n) not in CPU_PEAK_SHAPES]
             + model_gemms(args.shape, args.tokens))
    rows = []
    for kind, (m, k, n) in cases:
        rate = matmul_peak(dtype, cpu, (m, k, n), args.reps)
        rows.append({"what": kind, "m": m, "k": k, "n": n, "TFLOP/s": round(rate / 1e12, 3)})
        print(rows[-1], file=sys.stderr, flush=True)
    best = max(r["TFLOP/s"] for r in rows)
    probe = max(r["TFLOP/s"] for r in rows if r["what"] == "library probe")
    for r in rows:
        r["of best"] = round(r["TFLOP/s"] / best, 3)
    summary = {"dtype": args.dtype, "threads": args.threads, "best TFLOP/s": best, "library probe TFLOP/s": probe,
               "1024^3 TFLOP/s": next((r["TFLOP/s"] for r in rows if (r["m"], r["k"], r["n"]) == (1024,) * 3), None),
               "best square TFLOP/s": max((r["TFLOP/s"] for r in rows if r["m"] == r["k"] == r["n"]), default=None)}
    emit(rows + [summary], args.json)
    print(table(rows, ["what", "m", "k", "n", "TFLOP/s", "of best"]))
    print(table([summary], list(summary)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
