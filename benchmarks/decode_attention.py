"""One decoding step's attention (one new position per row over a KV cache), grouped-query heads: SDPA with
one query row per head (`enable_gqa`) against the form LlamaAttention uses, the query heads that share a
key/value head folded into that head's query rows (`llama_ft.model.llama.grouped_decode_attention`).

    python benchmarks/decode_attention.py [--rows 16 64] [--positions 400 900] [--threads 2] [--json out.json]

SmolLM2-135M's heads (9 query, 3 key/value, head_dim 64), bf16, the cache as generation holds it: views into
buffers with room for 24 more positions, half the rows left-padded by 50 positions (a boolean mask). Both forms
are checked against an fp32 reference. Prints a table and JSON: milliseconds per call (median) and the speed-up.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llama_ft.model.llama import grouped_decode_attention  # noqa: E402


def per_head(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


FORMS = {"one query row per head (enable_gqa)": per_head, "heads folded into rows": grouped_decode_attention}


def case(rows: int, positions: int, heads: int, kv_heads: int, dim: int, device: str):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(rows, 1, heads, dim, generator=g).to(device, torch.bfloat16).transpose(1, 2)
    bufs = [torch.randn(rows, kv_heads, positions + 24, dim, generator=g).to(device, torch.bfloat16)
            for _ in range(2)]
    k, v = (b[:, :, :positions] for b in bufs)
    mask = torch.ones(rows, 1, 1, positions, dtype=torch.bool, device=device)
    mask[: rows // 2, :, :, :50] = False
    return q, k, v, mask


def timed(fn, args, reps: int, device: str) -> float:
    times = []
    for i in range(reps + 3):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(*args)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


@torch.inference_mode()
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--positions", type=int, nargs="+", default=[400, 900])
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for rows in args.rows:
        for positions in args.positions:
            q, k, v, mask = case(rows, positions, args.heads, args.kv_heads, args.head_dim, args.device)
            ref = per_head(q.float(), k.float(), v.float(), mask)
            row = {"rows": rows, "positions": positions}
            for name, fn in FORMS.items():
                err = (fn(q, k, v, mask).float() - ref).abs().max().item()
                if err > 0.05:
                    raise SystemExit(f"{name}: max error {err:.3g} against the fp32 reference")
                row[name] = round(timed(fn, (q, k, v, mask), args.reps, args.device), 3)
            row["speed-up"] = round(row[list(FORMS)[0]] / row[list(FORMS)[1]], 2)
            results.append(row)
    out = {"cpu": platform.processor() or platform.machine(), "device": args.device,
           "threads": torch.get_num_threads(), "heads": args.heads, "kv_heads": args.kv_heads,
           "head_dim": args.head_dim, "ms_per_call": results}
    print(json.dumps(out, indent=1))
    cols = ["rows", "positions", *FORMS, "speed-up"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---:|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
