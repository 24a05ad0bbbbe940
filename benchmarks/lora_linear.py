"""One LoRA projection, forward + backward under bf16 autocast: llama_ft's LoRALinear against the plain
formulation `x W^T + (x A^T B^T) * scale` (what llama_ft ran before, and the textbook form).

    python benchmarks/lora_linear.py --tokens 4096 --rank 16

SmolLM2-135M's projection shapes (576 -> 576, 576 -> 192, 576 -> 1536, 1536 -> 576), frozen W in bf16, fp32
adapters, as the engine holds them. Outputs and gradients are checked to agree. Prints a table and JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llama_ft.model.lora import LoRALinear  # noqa: E402

SHAPES = ((576, 576), (576, 192), (576, 1536), (1536, 576))


def plain(m: LoRALinear, x):
    return F.linear(x, m.weight, m.bias) + F.linear(F.linear(x, m.lora_A), m.lora_B) * m.scaling


def step(fn, m, x, grad):
    for p in (m.lora_A, m.lora_B):
        p.grad = None
    x.grad = None
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        y = fn(m, x)
    y.backward(grad)
    return y


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for d_in, d_out in SHAPES:
        base = nn.Linear(d_in, d_out, bias=False).to(torch.bfloat16).requires_grad_(False)
        m = LoRALinear(base, args.rank, 2.0 * args.rank)
        nn.init.normal_(m.lora_B, std=0.02)
        x = torch.randn(args.tokens, d_in).to(torch.bfloat16).requires_grad_(True)
        grad = torch.randn(args.tokens, d_out).to(torch.bfloat16)
        fns = {"plain": plain, "llama_ft": lambda m, x: m(x)}
        outs = {k: (step(f, m, x, grad).float(), m.lora_A.grad.clone(), x.grad.float().clone())
                for k, f in fns.items()}
        err = max((a - b).abs().max().item() / (b.abs().max().item() + 1e-6)
                  for a, b in zip(outs["llama_ft"], outs["plain"]))
        times = {k: [] for k in fns}
        for _ in range(args.reps):
            for k, f in fns.items():
                t0 = time.perf_counter()
                step(f, m, x, grad)
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        rows.append({"shape": f"{d_in}->{d_out}", "plain_ms": round(med["plain"], 3),
                     "llama_ft_ms": round(med["llama_ft"], 3), "speedup": round(med["plain"] / med["llama_ft"], 3),
                     "max_rel_diff": round(err, 5)})
    print(f"LoRA projection fwd+bwd, {args.tokens} tokens, rank {args.rank}, bf16 autocast, "
          f"{torch.get_num_threads()} threads")
    print("| shape | plain ms | llama_ft ms | speed-up | max rel. diff |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shape']} | {r['plain_ms']} | {r['llama_ft_ms']} | {r['speedup']} | {r['max_rel_diff']} |")
    print(json.dumps({"threads": torch.get_num_threads(), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
