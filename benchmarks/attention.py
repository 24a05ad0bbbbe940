"""Causal GQA attention, forward + backward in bf16: which kernel is fastest for a shape on this device.

    python benchmarks/attention.py --batch 16 --heads 9 --kv-heads 3 --head-dim 64 --seq 128 256 384

Candidates: SDPA's default choice (on CPU the flash kernel), SDPA forced to the math backend, and a
hand-written attention (batched matmuls, an additive causal mask, softmax in fp32), each eager and compiled.
All get the same q, k, v (GQA heads shared, as the model passes them) and the same upstream gradient; outputs and
input gradients are checked against the fp32 math reference. Prints a table and JSON (milliseconds per
forward + backward, speed-up over the default).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def sdpa_default(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def sdpa_math(q, k, v):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def manual(q, k, v):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    T = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    p = scores.masked_fill(causal, float("-inf")).softmax(-1).to(q.dtype)
    return p @ v


CANDIDATES = {"sdpa (default)": sdpa_default, "sdpa math": sdpa_math, "hand-written": manual}


def inputs(b, h, kv, t, d, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda n: torch.randn(b, n, t, d, generator=g).to(device, torch.bfloat16).requires_grad_(True)  # noqa: E731
    return mk(h), mk(kv), mk(kv), torch.randn(b, h, t, d, generator=g).to(device, torch.bfloat16)


def fwd_bwd(fn, q, k, v, grad):
    for x in (q, k, v):
        x.grad = None
    out = fn(q, k, v)
    out.backward(grad)
    return out


def timed(fn, args, reps: int, device) -> float:
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fwd_bwd(fn, *args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--seq", type=int, nargs="+", default=[128, 256, 384])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fns = dict(CANDIDATES)
    if not args.no_compile:
        fns.update({f"{k}, compiled": torch.compile(f, dynamic=False) for k, f in CANDIDATES.items()})
    rows = []
    for t in args.seq:
        q, k, v, grad = inputs(args.batch, args.heads, args.kv_heads, t, args.head_dim, device)
        ref_in = [x.detach().float().requires_grad_(True) for x in (q, k, v)]
        ref = fwd_bwd(sdpa_math, *ref_in, grad.float())
        row = {"seq": t}
        for name, fn in fns.items():
            out = fwd_bwd(fn, q, k, v, grad)  # warm-up (and compilation)
            err = max((out.float() - ref).abs().max().item(),
                      *((x.grad.float() - r.grad).abs().max().item() for x, r in zip((q, k, v), ref_in)))
            row[name] = {"ms": round(1e3 * timed(fn, (q, k, v, grad), args.reps, device), 2),
                         "max_err_vs_fp32": round(err, 4)}
        base = row["sdpa (default)"]["ms"]
        for name in fns:
            row[name]["speedup"] = round(base / row[name]["ms"], 3)
        rows.append(row)
    print(f"causal GQA attention fwd+bwd, bf16, {args.device}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}, heads {args.heads}/{args.kv_heads}, head_dim {args.head_dim}")
    print("| seq | " + " | ".join(fns) + " |\n|---:|" + "---:|" * len(fns))
    for r in rows:
        print(f"| {r['seq']} | " + " | ".join(f"{r[n]['ms']:.1f} ms ({r[n]['speedup']:.2f}x)" for n in fns) + " |")
    print(json.dumps({"device": args.device, "threads": torch.get_num_threads(), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
