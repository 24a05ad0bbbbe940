"""Where a training step's time goes: torch.profiler over llama_ft's step, grouped into matrix multiplies,
attention, elementwise work, copies/casts, the optimizer and the rest.

    python benchmarks/profile_step.py --shape smollm2-135m --policy lora:16 --batch 16 --seq 256 [--compile [--kernels]]

Random weights, classification head, bf16 autocast, the engine's dtypes (frozen bf16, trainable fp32), and on a
CPU glibc keeping freed pages, as `train()` has it. Warm-up steps (and compilation) run before the profiled steps,
and one more step runs under the profiler unrecorded. The profiler's own buffers move the heap, and the kernel that
first writes a fresh page is charged for faulting it in: on a CPU --resident-gib of heap is written and left free
first, for both to reuse. The minor page faults of the recorded steps are reported (`faults_per_step`). Prints a
table and JSON (self time per group and the top operators). --kernels: each of inductor's CPU kernels under its
own name (its fused operations), instead of one entry per compiled graph.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import resource
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.train_step import Setting, batch, config, ours_stepper, timed  # noqa: E402
from llama_ft.heap import keep_freed_pages  # noqa: E402
from llama_ft.hf.loading import random_model  # noqa: E402
from llama_ft.model.policies import parse_policy  # noqa: E402

# Operator name fragments -> group; the first match wins, so the specific names come first.
GROUPS = (
    # inductor's CPU kernels by name (--kernels) list the operations they fuse (`cpp_fused__to_copy_exp_mul_...`),
    # which the groups below would match.
    ("compiled kernels", ("cpp_fused",)),
    ("attention", ("flash_attention", "scaled_dot_product", "_efficient_attention", "_cudnn_attention", "sdpa",
                   "fmha", "flash_")),
    ("optimizer", ("adam", "_foreach", "multi_tensor")),
    # CUDA kernels: cuBLAS's nvjet / cutlass / xmma GEMMs and their split-K reductions.
    ("matmul", ("mm", "matmul", "linear", "addmm", "bmm", "baddbmm", "mkldnn", "onednn", "gemm", "nvjet",
                "cutlass", "xmma", "splitk")),
    ("copy/cast", ("copy_", "to_copy", "_to_copy", "contiguous", "clone", "cat", "index", "gather", "scatter",
                   "fill_", "zero_", "empty", "memcpy", "memset", "copy_kernel")),
    ("compiled kernels", ("compiled", "triton_", "graph_")),
    ("elementwise", ("mul", "add", "sub", "div", "pow", "rsqrt", "silu", "neg", "mean", "sum", "exp", "where",
                     "masked", "softmax", "cross_entropy", "nll", "log_softmax", "sqrt", "cos", "sin", "reduce_kernel",
                     "elementwise_kernel")),
)


ADAPTER_OPS = ("aten::mm", "aten::addmm")

# Ranges torch itself annotates (the optimizer step): on CUDA they span kernels counted on their own.
ANNOTATIONS = ("Optimizer.", "ProfilerStep")


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "other"


@contextmanager
def kernel_names() -> Iterator[None]:
    """A context in which inductor's CPU kernels report to the profiler under their names; the settings are read
    when a graph's kernels are generated (the warm-up), so they hold around it, and torch's come back after."""
    import torch._inductor.config as inductor_config
    # Inductor's and AOTAutograd's caches key their graphs on inductor's config, this setting included: a graph
    # cached by a run without it is not taken, and a rerun with it takes its own reporting kernels from the cache.
    with inductor_config.patch({"cpp.enable_kernel_profile": True}):
        yield


CHUNK = 256 * 2**20


def resident_heap(nbytes: int) -> None:
    """Leave `nbytes` of glibc's heap free but resident, so that neither the profiled steps nor the profiler's
    buffers fault pages in: chunks are allocated and written, a small block above them keeps the heap's top from
    being handed back when they are freed (keep_freed_pages keeps the rest), and they are freed."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    chunks = [libc.malloc(CHUNK) for _ in range(nbytes // CHUNK)]
    for c in chunks:
        ctypes.memset(c, 1, CHUNK)
    libc.malloc(4096)  # the fence, never freed
    for c in chunks:
        libc.free(c)


def profile(shape: str, policy: str, s: Setting, warmup: int, steps: int, resident_gib: float = 0) -> dict:
    cfg = config(shape)
    b = batch(cfg, s.batch, s.seq, s.device)
    model = random_model(cfg, "classification", 2, dtype=torch.float32, device=s.device, seed=0)
    step = ours_stepper(model, policy, s, compile=s.compile)
    for _ in range(warmup):
        step(b)
    wall = timed(step, b, steps, s.device)  # unprofiled, synchronised: the step as the user sees it
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                    if s.device.type == "cuda" else [])
    # Under LoRA the matrix multiplies split by shape: the adapters' rank-r ones (r wide, or k r where k adapters
    # share their input) are bound by memory, unlike the frozen projections'.
    rank = parse_policy(policy).rank if policy.startswith("lora") else None
    if resident_gib > 0:
        resident_heap(int(resident_gib * 2**30))
    schedule = torch.profiler.schedule(wait=0, warmup=1, active=steps, repeat=1)
    with torch.profiler.profile(activities=acts, record_shapes=rank is not None, schedule=schedule,
                                acc_events=True) as prof:
        step(b)
        prof.step()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(steps):
            step(b)
            prof.step()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    by_group: dict[str, float] = defaultdict(float)
    per_op: dict[str, list] = defaultdict(lambda: [0.0, 0])  # name -> [us, calls], over every shape
    on_gpu = s.device.type == "cuda"
    for e in prof.key_averages(group_by_input_shape=rank is not None):
        # On CUDA only the kernels themselves: an operator that launched one reports its time as well.
        if on_gpu and (e.device_type != torch.autograd.DeviceType.CUDA or e.key.startswith(ANNOTATIONS)):
            continue
        us = e.self_device_time_total if on_gpu else e.self_cpu_time_total
        if us <= 0:
            continue
        group = group_of(e.key)
        if rank and e.key in ADAPTER_OPS and {rank, 2 * rank, 3 * rank} & {d for x in e.input_shapes for d in x or ()}:
            group = f"matmul: rank-{rank} adapters"
        by_group[group] += us
        per_op[e.key][0] += us
        per_op[e.key][1] += e.count
    total = sum(by_group.values())
    ops = sorted(((k, us, n) for k, (us, n) in per_op.items()), key=lambda o: -o[1])
    # On CUDA the operators are kernels: their time over the wall time is how busy the GPU was (below 1, the
    # step waits on the Python and dispatch that launch them), and their count is launches per step.
    return {"shape": shape, "policy": policy, "compile": s.compile, "batch": s.batch, "seq": s.seq,
            "threads": torch.get_num_threads(), "step_seconds": total / 1e6 / steps, "wall_seconds": wall,
            "busy": round(total / 1e6 / steps / wall, 3), "faults_per_step": faults // steps,
            "operator_calls_per_step": sum(c for _, _, c in ops) // steps,
            "named_kernels": sum("cpp_fused" in k for k, _, _ in ops),  # inductor's CPU kernels by name (--kernels)
            "groups": {g: round(us / total, 4) for g, us in sorted(by_group.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"op": k, "share": round(us / total, 4), "calls_per_step": c // steps}
                        for k, us, c in ops[:15]]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="smollm2-135m")
    ap.add_argument("--policy", default="lora:16")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--kernels", action="store_true", help="with --compile on a CPU: inductor's kernels by name")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--resident-gib", type=float, default=6.0,
                    help="on a CPU, heap left free but resident before the profiled steps (0: none)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    if args.kernels and (not args.compile or args.device != "cpu"):
        ap.error("--kernels names inductor's CPU kernels: pass --compile, on --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    # glibc keeps freed pages, as train() has it; only then does the resident heap stay resident (the fence).
    kept = args.device == "cpu" and keep_freed_pages()
    s = Setting(torch.device(args.device), torch.bfloat16, args.batch, args.seq, compile=args.compile)
    with kernel_names() if args.kernels else nullcontext():
        res = profile(args.shape, args.policy, s, args.warmup, args.steps, args.resident_gib if kept else 0)
    print(f"{res['shape']} {res['policy']} compile={res['compile']} {res['batch']}x{res['seq']}, "
          f"{res['threads']} threads: {res['step_seconds']:.4f} s of operator self time per step, "
          f"{res['wall_seconds']:.4f} s wall ({100 * res['busy']:.0f}% busy), {res['faults_per_step']} page faults, "
          f"{res['operator_calls_per_step']} operator calls per step")
    print("| group | share of step |\n|---|---:|")
    for g, share in res["groups"].items():
        print(f"| {g} | {100 * share:.1f}% |")
    print("\n| top operator | share | calls/step |\n|---|---:|---:|")
    for o in res["top_ops"]:
        print(f"| `{o['op']}` | {100 * o['share']:.1f}% | {o['calls_per_step']} |")
    print(json.dumps(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
