"""Tokens/s of one training step, llama_ft vs transformers, per freezing policy; trunk-cache epochs; memory.

    python benchmarks/train_step.py --quick            # SmolLM2-135M and Llama-3.2-1B shapes, a few minutes
    python benchmarks/train_step.py --batch 8 --seq 256 --reps 5 --full-1b   # longer; 1B `full` needs ~25 GiB

Random weights, classification head, bf16 autocast on CPU. Both models get the same policy and the same
dtypes (frozen weights bf16, trainable weights fp32 masters, torch AdamW foreach, clip 1.0); LoRA on the
transformers model is our LoRALinear wrapped around its nn.Linear layers (same names). Our step is
llama_ft.train.train_step; theirs is the plain loop (autocast forward with labels, backward, clip, step,
zero_grad). Repetitions alternate ours/theirs so background load hits both alike; the median step counts.
Llama-3.2-1B `full` is skipped unless --full-1b: fp32 AdamW alone needs ~20 GB, two models do not fit.

Trunk cache: `train()` for two epochs with and without the cache; the second epoch's speed-up against the
FLOP ratio (bottom forward + 3x top) / (3x top). Memory: peak RSS growth while our model is built and
stepped, next to llama_ft.audit.memory_estimate (weights, masters, grads, AdamW; no activations).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llama_ft import LlamaConfig
from llama_ft.audit import count_parameters, memory_estimate
from llama_ft.loading import random_model
from llama_ft.lora import add_lora
from llama_ft.policies import parse_policy
from llama_ft.train import TrainConfig, train, train_step
from llama_ft.train.loop import TaskLoss, prepare_model
from llama_ft.train.optim import build_optimizer, build_scheduler
from llama_ft.train.trunk import find_split, flop_ratio

POLICIES = ("head", "last:1", "last:4", "lora:8", "full")
SHAPES = ("smollm2-135m", "llama-3.2-1b")
BF16 = torch.bfloat16


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Samples the resident set every 2 ms in a thread; .peak is the highest seen."""

    def __enter__(self):
        self.peak, self._stop = rss(), False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()


def release_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def config(shape: str) -> LlamaConfig:
    cfg = LlamaConfig.from_pretrained(shape)
    cfg.pad_token_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    return cfg


def batch(cfg: LlamaConfig, b: int, t: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(3, cfg.vocab_size, (b, t), generator=g),
            "attention_mask": torch.ones(b, t, dtype=torch.long), "label": torch.randint(0, 2, (b,), generator=g)}


def ours_stepper(model, policy: str):
    prepare_model(model, TrainConfig(policy=policy, amp="bf16"), BF16, torch.device("cpu"))
    opt = build_optimizer(model, 1e-5, 0.01, torch.device("cpu"))
    sched = build_scheduler(opt, 10**6, 0.0, "linear")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_model = TaskLoss(model, find_split(model), BF16)

    def step(b):
        mb = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "label": b["label"]}
        train_step(loss_model, [mb], opt, sched, scaler, params, step_examples=len(b["label"]), world=1,
                   amp_dtype=BF16, device=torch.device("cpu"), max_grad_norm=1.0)
    return step


def hf_model(ours_sd: dict, cfg: LlamaConfig, policy: str, trainable: set[str]):
    import transformers
    d = {k: v for k, v in cfg.to_dict().items() if k != "architectures"}
    hcfg = transformers.LlamaConfig(**d, num_labels=2)
    hcfg._attn_implementation = "sdpa"
    model = transformers.LlamaForSequenceClassification(hcfg)
    model.load_state_dict(ours_sd, strict=False)
    pol = parse_policy(policy)
    if pol.kind == "lora":
        torch.manual_seed(0)
        add_lora(model.model, pol.rank, pol.alpha)
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
        p.data = p.data.to(torch.float32 if p.requires_grad else BF16)
    missing = trainable - {n for n, _ in model.named_parameters()}
    assert not missing, f"transformers model lacks {sorted(missing)[:3]}"
    model.train()
    return model


def hf_stepper(model):
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "lora_" not in n]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not (p.ndim >= 2 and "lora_" not in n)]
    opt = torch.optim.AdamW([g for g in ({"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0})
                             if g["params"]], lr=1e-5, foreach=True)

    def step(b):
        with torch.autocast("cpu", dtype=BF16):
            loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["label"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def timed(step, b, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step(b)
    return (time.perf_counter() - t0) / n


def bench_policy(shape: str, policy: str, args) -> dict:
    cfg = config(shape)
    b = batch(cfg, args.batch, args.seq)
    release_memory()
    base = rss()
    with PeakRSS() as mem:
        ours = random_model(cfg, "classification", 2, dtype=torch.float32, seed=0)
        sd = {k: v.clone() for k, v in ours.state_dict().items()} if not args.no_hf else None
        step_ours = ours_stepper(ours, policy)
        if sd is not None:
            # The fp32 copy for transformers is not ours: keep it out of our peak.
            mem_sd = sum(v.numel() * v.element_size() for v in sd.values())
        step_ours(b)
        step_ours(b)
    ours_peak = mem.peak - base - (mem_sd if sd is not None else 0)
    counts = count_parameters(ours)
    est = memory_estimate(counts, BF16)
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    row = {"shape": shape, "policy": policy, "batch": args.batch, "seq": args.seq,
           "trainable": counts["trainable"], "total": counts["total"],
           "peak_rss_gib": round(ours_peak / 2**30, 3), "audit_estimate_gib": round(est["total"] / 2**30, 3)}
    ours_t, hf_t = [], []
    step_hf = None
    if sd is not None:
        hf = hf_model(sd, cfg, policy, trainable)
        del sd
        release_memory()
        step_hf = hf_stepper(hf)
        step_hf(b)
    for _ in range(args.reps):
        ours_t.append(timed(step_ours, b, args.steps))
        if step_hf is not None:
            hf_t.append(timed(step_hf, b, args.steps))
    tokens = args.batch * args.seq
    row["ours_tok_s"] = round(tokens / statistics.median(ours_t), 1)
    if hf_t:
        row["hf_tok_s"] = round(tokens / statistics.median(hf_t), 1)
        row["ratio"] = round(row["ours_tok_s"] / row["hf_tok_s"], 3)
    return row


def bench_full_1b_sequential(args) -> dict:
    """Llama-1B `full`: ours, freed, then theirs (both at once do not fit); not interleaved."""
    shape, policy = "llama-3.2-1b", "full"
    cfg = config(shape)
    b = batch(cfg, args.batch, args.seq)
    ours = random_model(cfg, "classification", 2, dtype=torch.float32, seed=0)
    sd_path = Path("/tmp/llama_ft_bench_1b.pt")
    torch.save(ours.state_dict(), sd_path)
    step = ours_stepper(ours, policy)
    step(b)
    t_ours = statistics.median(timed(step, b, args.steps) for _ in range(args.reps))
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    del ours, step
    release_memory()
    hf = hf_model(torch.load(sd_path, mmap=True), cfg, policy, trainable)
    sd_path.unlink()
    step = hf_stepper(hf)
    step(b)
    t_hf = statistics.median(timed(step, b, args.steps) for _ in range(args.reps))
    tokens = args.batch * args.seq
    return {"shape": shape, "policy": policy, "batch": args.batch, "seq": args.seq, "ours_tok_s": round(tokens / t_ours, 1),
            "hf_tok_s": round(tokens / t_hf, 1), "ratio": round(t_hf / t_ours, 3), "note": "sequential, not interleaved"}


def bench_cache(shape: str, policy: str, args) -> dict:
    """Second-epoch seconds with and without the frozen-trunk cache, against the FLOP-ratio prediction."""
    cfg = config(shape)
    g = torch.Generator().manual_seed(1)
    n = args.batch * args.cache_steps
    data = [{"input_ids": torch.randint(3, cfg.vocab_size, (args.seq,), generator=g).tolist(), "label": i % 2}
            for i in range(n)]
    epoch2 = {}
    for use in (False, True):
        model = random_model(cfg, "classification", 2, dtype=torch.float32, seed=0)
        r = train(model, data, TrainConfig(policy=policy, amp="bf16", batch_size=args.batch, epochs=2,
                                           trunk_cache=use, progress=False, device="cpu"))
        epoch2[use] = r.epoch_seconds[1]
        split = find_split(model)
        del model
        release_memory()
    speedup = epoch2[False] / epoch2[True]
    pred = flop_ratio(_meta(cfg, policy), split)
    row = {"shape": shape, "policy": policy, "epoch2_s_no_cache": round(epoch2[False], 3),
           "epoch2_s_cache": round(epoch2[True], 3), "speedup": round(speedup, 2),
           "flop_ratio": None if pred == float("inf") else round(pred, 2)}
    if row["flop_ratio"]:
        row["fraction_of_predicted"] = round((speedup - 1) / (pred - 1), 2) if pred > 1 else None
    return row


def _meta(cfg, policy):
    from llama_ft.loading import build_model
    from llama_ft.policies import apply_policy
    m = build_model(cfg, "classification", 2)
    apply_policy(m, policy)
    return m


def table(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="batch 2, seq 64, 1 step x 3 reps, 1 thread, trunk-cache runs on the first shape only")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    ap.add_argument("--policies", nargs="+", default=list(POLICIES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2, help="steps per timed repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cache-steps", type=int, default=8, help="steps per epoch in the trunk-cache runs")
    ap.add_argument("--full-1b", action="store_true", help="also run Llama-1B `full` (~25 GiB; sequential)")
    ap.add_argument("--no-hf", action="store_true", help="ours only")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.steps, args.reps, args.cache_steps = 2, 64, 1, 3, 4
        # On a shared 2-core machine two OpenMP threads spin against other jobs: one is faster.
        args.threads = args.threads or 1
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows, cache_rows, skipped = [], [], []
    for shape in args.shapes:
        for policy in args.policies:
            if shape == "llama-3.2-1b" and policy == "full":
                if args.full_1b:
                    rows.append(bench_full_1b_sequential(args))
                else:
                    skipped.append("llama-3.2-1b full (needs ~25 GiB; pass --full-1b)")
                continue
            rows.append(bench_policy(shape, policy, args))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            release_memory()
        for policy in ("head", "last:1", "last:4"):
            # --quick: the cache runs (two 2-epoch trainings per policy) on the first shape only.
            if policy in args.policies and not (args.quick and shape != args.shapes[0]):
                cache_rows.append(bench_cache(shape, policy, args))
                print(json.dumps(cache_rows[-1]), file=sys.stderr, flush=True)
    result = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "steps": rows, "trunk_cache": cache_rows, "skipped": skipped,
              "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, indent=2))
    print()
    print(table(rows, ["shape", "policy", "batch", "seq", "trainable", "ours_tok_s", "hf_tok_s", "ratio",
                       "peak_rss_gib", "audit_estimate_gib"]))
    print()
    print(table(cache_rows, ["shape", "policy", "epoch2_s_no_cache", "epoch2_s_cache", "speedup", "flop_ratio",
                             "fraction_of_predicted"]))
    for s in skipped:
        print(f"skipped: {s}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
