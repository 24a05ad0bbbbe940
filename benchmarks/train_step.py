"""Tokens/s of one training step, llama_ft vs transformers, per freezing policy; eval tokens/s; step memory.

    python benchmarks/train_step.py --quick            # SmolLM2-135M and Llama-3.2-1B shapes, a few minutes
    python benchmarks/train_step.py --batch 8 --seq 256 --reps 5 --full-1b   # longer; 1B `full` needs ~25 GiB
    python -m benchmarks                                # the whole suite (this, MFU, cost curves, end-to-end)

Random weights, classification head, autocast (bf16 on CPU; bf16 or fp16 on CUDA). Both models get the same
weights and dtypes (frozen weights bf16 as our engine stores them, trainable weights fp32 masters), the same
batch, torch AdamW (fused, as ours and as the HF Trainer's default `adamw_torch_fused`), clip 1.0 and, under
fp16, a GradScaler. LoRA on the transformers model is PEFT's (`get_peft_model`, fp32 adapters, the same
adapter weights and targets; the head trained as `modules_to_save`). Our step is llama_ft.train.train_step;
theirs is the plain loop (autocast forward with labels and use_cache=False, backward, clip, step, zero_grad).
A second transformers column, "as commonly run", keeps every weight fp32 under the same autocast (what the HF
Trainer does with bf16=True / fp16=True). --compile adds ours with TrainConfig.compile (its warm-up apart).
Repetitions take turns in an order that reverses each turn (`turns`), so background load hits all alike; the
median repetition counts.

Memory per model: resident bytes (weights, AdamW state) plus the peak growth during one step (activations,
gradients): CUDA allocator counters, or on CPU the resident set sampled every 2 ms.
Llama-1B `full` on CPU is skipped unless --full-1b: fp32 AdamW alone needs ~20 GB, two models do not fit.
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
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llama_ft import LlamaConfig
from llama_ft.heap import resident_bytes
from llama_ft.hf.loading import build_model, random_model
from llama_ft.model.lora import TARGETS as LORA_TARGETS
from llama_ft.model.lora import MergedTraining, merged_dtype
from llama_ft.model.params import count_parameters
from llama_ft.model.policies import parse_policy
from llama_ft.train import TrainConfig, train_step
from llama_ft.train.compile import InferenceCompiler, activation_budget, compile_blocks
from llama_ft.train.config import resolve_frozen_dtype
from llama_ft.train.graphs import MODE as GRAPHS_MODE
from llama_ft.train.loop import TaskLoss, prepare_model
from llama_ft.train.optim import build_optimizer, build_scheduler
from llama_ft.train.trunk import bottom_forward, find_split

AMP_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}
POLICIES = ("head", "last:1", "last:4", "lora:8", "full")
SHAPES = ("smollm2-135m", "llama-3.2-1b")
# A few-MB model of the same architecture, for smoke tests of the suite itself.
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": True, "pad_token_id": 0}


@dataclass
class Setting:
    """Where and how one comparison runs."""
    device: torch.device
    amp: torch.dtype | None
    batch: int
    seq: int
    steps: int = 2     # steps per timed repetition
    reps: int = 5
    common: bool = True  # also time transformers "as commonly run" (fp32 weights + autocast)
    compile: bool = False  # also time ours with TrainConfig.compile
    compile_mode: str | None = None  # torch.compile's mode for that column ("reduce-overhead": CUDA graphs)

    @property
    def frozen_dtype(self) -> torch.dtype:
        return resolve_frozen_dtype("auto", self.amp)




class PeakRSS:
    """Samples the resident set every 2 ms in a thread; .peak is the highest seen."""

    def __enter__(self):
        self.peak, self._stop = resident_bytes(), False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, resident_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def config(shape: str) -> LlamaConfig:
    """The preset's config (or the tiny one), with a pad id so transformers can pool a batch."""
    cfg = LlamaConfig(**TINY) if shape == "tiny" else LlamaConfig.from_pretrained(shape)
    cfg.pad_token_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    return cfg


def batch(cfg: LlamaConfig, b: int, t: int, device: torch.device, seed: int = 0) -> dict:
    """Random ids (never the pad id), a full attention mask and binary labels."""
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(3, cfg.vocab_size, (b, t), generator=g).to(device),
            "attention_mask": torch.ones(b, t, dtype=torch.long, device=device),
            "label": torch.randint(0, 2, (b,), generator=g).to(device)}


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is not None and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


class Stepper:
    """One training step of a model (ours or transformers) and what it keeps resident."""

    def __init__(self, model, opt, step_fn):
        self.model, self.opt, self._step = model, opt, step_fn
        self.with_cache = None  # ours under a policy with a frozen bottom: b -> the cached-epoch Stepper

    def __call__(self, b: dict) -> float | torch.Tensor:
        return self._step(b)

    def resident_bytes(self) -> int:
        state = [t for s in self.opt.state.values() for t in s.values() if torch.is_tensor(t) and t.ndim] \
            if self.opt is not None else []
        return tensor_bytes(list(self.model.parameters()) + list(self.model.buffers())) + tensor_bytes(state)


def ours_stepper(model, policy: str, s: Setting, compile: bool = False) -> Stepper:
    prepare_model(model, TrainConfig(policy=policy), s.frozen_dtype, s.device)
    if compile:
        compile_blocks(model, mode=s.compile_mode)
    graphs = compile and s.compile_mode == GRAPHS_MODE
    opt = build_optimizer(model, 1e-5, 0.01, s.device)
    sched = build_scheduler(opt, 10**6, 0.0, "linear")
    scaler = torch.amp.GradScaler(s.device.type, enabled=s.amp == torch.float16)
    params = [p for p in model.parameters() if p.requires_grad]
    feature_dtype = torch.bfloat16 if s.amp is not None else torch.float32  # as train() does
    loss_model = TaskLoss(model, find_split(model), feature_dtype)
    merged = MergedTraining(model, merged_dtype(s.device, s.amp, 1))  # LoRA through merged weights, as train() does

    def step(b):
        with activation_budget(s.device.type) if compile else nullcontext():  # as the engine's compiled blocks run
            loss, _ = train_step(loss_model, [b], opt, sched, scaler, params, step_examples=len(b["label"]),
                                 world=1, amp_dtype=s.amp, device=s.device, max_grad_norm=1.0, graphs=graphs)
        merged.refresh()
        return loss
    stepper = Stepper(model, opt, step)
    stepper.merged = merged
    split = loss_model.split
    if split.has_frozen_bottom and (split.start > 0 or not split.per_token):
        stepper.with_cache = lambda b: _cached_step(step, model, split, feature_dtype, b, s)
    return stepper


def compiled_cpu_row(model_shape: str, shape: tuple[int, int], policy: str, steps: int, reps: int):
    """(setting, config, batch, ours) for a row of a benchmark that toggles the engine's settings on the CPU: bf16,
    each block compiled, and no graphs left from earlier rows (dynamo's recompile limit)."""
    s = Setting(torch.device("cpu"), torch.bfloat16, shape[0], shape[1], steps, reps)
    cfg = config(model_shape)
    b = batch(cfg, s.batch, s.seq, s.device)
    release_memory()
    torch._dynamo.reset()
    ours = ours_stepper(random_model(cfg, "classification", 2, dtype=torch.float32, device=s.device, seed=0),
                        policy, s, compile=True)
    return s, cfg, b, ours


def _cached_step(step, model, split, feature_dtype, b: dict, s: Setting):
    """The step an epoch after the first runs with the trunk cache: the frozen bottom's output precomputed."""
    with torch.inference_mode(), torch.autocast(s.device.type, dtype=s.amp or torch.bfloat16,
                                                enabled=s.amp is not None):
        feats = bottom_forward(model, split, b["input_ids"], b["attention_mask"]).to(feature_dtype)
    mb = {"input_ids": None, "attention_mask": b["attention_mask"], "label": b["label"], "features": feats.clone()}
    return Stepper(model, None, lambda _b: step(mb))


def hf_twin(ours, cfg: LlamaConfig, policy: str, s: Setting, all_fp32: bool = False):
    """transformers' LlamaForSequenceClassification holding a copy of our weights (same names, same dtypes,
    same LoRA adapter weights, through PEFT; all_fp32: every weight fp32), with the same parameters trainable."""
    import transformers
    d = {k: v for k, v in cfg.to_dict().items() if k != "architectures"}
    hcfg = transformers.LlamaConfig(**d, num_labels=2)
    hcfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = transformers.LlamaForSequenceClassification(hcfg)
    pol = parse_policy(policy)
    sd = {k: (v.detach().float() if all_fp32 else v.detach()).clone() for k, v in ours.state_dict().items()}
    lora = {k: sd.pop(k) for k in [k for k in sd if ".lora_" in k]}
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if unexpected or any("rotary" not in k for k in missing):
        raise RuntimeError(f"weights do not map onto transformers: missing {missing[:3]}, unexpected {unexpected[:3]}")
    # The rope buffers are not in the state dict: rebuild that module off the meta device.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config).to(s.device)
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
    if pol.kind == "lora":
        model = peft_twin(model, pol, lora)
    model.train()
    return model


def peft_twin(model, pol, lora: dict, task_type: str = "SEQ_CLS"):
    """PEFT's LoRA on the transformers model, holding our adapter weights: fp32 adapters over the frozen base,
    the task head trained (PEFT's modules_to_save for `task_type`), as PEFT is commonly run at its best."""
    import peft
    cfg = peft.LoraConfig(r=pol.rank, lora_alpha=pol.alpha if pol.alpha is not None else 2 * pol.rank,
                          lora_dropout=0.0, target_modules=list(LORA_TARGETS), task_type=task_type)
    pm = peft.get_peft_model(model, cfg, autocast_adapter_dtype=True)
    params = dict(pm.named_parameters())
    with torch.no_grad():
        for k, v in lora.items():  # ours: ...q_proj.lora_A; PEFT: base_model.model....q_proj.lora_A.default.weight
            name = f"base_model.model.{k}.default.weight"
            params[name].copy_(v.to(params[name].device))
    n_ours = sum(v.numel() for v in lora.values())
    n_peft = sum(p.numel() for n, p in pm.named_parameters() if p.requires_grad and "lora_" in n)
    if n_ours != n_peft:
        raise RuntimeError(f"PEFT built {n_peft} adapter parameters, ours has {n_ours}")
    return pm


def hf_stepper(model, s: Setting) -> Stepper:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    decay = [p for n, p in named if p.ndim >= 2 and "lora_" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "lora_" not in n)]
    opt = torch.optim.AdamW([g for g in ({"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0})
                             if g["params"]], lr=1e-5, fused=True)
    scaler = torch.amp.GradScaler(s.device.type, enabled=s.amp == torch.float16)

    def step(b):
        with torch.autocast(s.device.type, dtype=s.amp or torch.bfloat16, enabled=s.amp is not None):
            loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["label"],
                         use_cache=False).loss
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return Stepper(model, opt, step)


def timed(fn, b: dict, n: int, device: torch.device) -> float:
    """Seconds per call of fn(b), over n calls (device synchronised at both ends)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn(b)
    sync(device)
    return (time.perf_counter() - t0) / n


def step_memory(fn, b: dict, device: torch.device) -> int:
    """Peak bytes one more call of fn(b) adds over what was held before it."""
    release_memory()
    sync(device)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn(b)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    base = resident_bytes()
    with PeakRSS() as mem:
        fn(b)
    return max(0, mem.peak - base)


def eval_fn(model, is_hf: bool, s: Setting):
    """Inference forward of a classification batch under autocast (what predict() runs per batch)."""
    def run(b):
        with torch.inference_mode(), torch.autocast(s.device.type, dtype=s.amp or torch.bfloat16,
                                                    enabled=s.amp is not None):
            if is_hf:
                return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
            return model(b["input_ids"], b["attention_mask"])
    return run


def turns(fns: dict, b: dict, s: Setting) -> dict[str, list[float]]:
    """Seconds of `s.steps` calls of each fn per turn, over `s.reps` turns whose order reverses each turn (ABBA):
    a machine's drift over the run reaches all alike, and each turn gives a paired ratio (`paired`)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for rep in range(s.reps):
        for k in (list(fns) if rep % 2 == 0 else list(fns)[::-1]):
            times[k].append(timed(fns[k], b, s.steps, s.device))
    return times


def paired(times: dict[str, list[float]], a: str, b: str) -> float:
    """The median over turns of b's seconds over a's: how many times faster a ran than b in the same turn."""
    return statistics.median(tb / ta for ta, tb in zip(times[a], times[b]))


def interleaved(fns: dict, b: dict, s: Setting) -> dict[str, float]:
    """Median seconds per call of each fn, over `turns`."""
    return {k: statistics.median(v) for k, v in turns(fns, b, s).items()}


def bench_policy(shape: str, policy: str, s: Setting, with_hf: bool = True, with_eval: bool = False,
                 with_cache: bool = True) -> dict:
    """Ours vs transformers (like for like, and as commonly run) on one policy: tokens/s, memory, first loss.
    with_cache: also ours as every epoch after the first runs with the trunk cache (ours_cache_tok_s)."""
    cfg = config(shape)
    b = batch(cfg, s.batch, s.seq, s.device)
    release_memory()
    ours = random_model(cfg, "classification", 2, dtype=torch.float32, device=s.device, seed=0)
    steppers = {"ours": ours_stepper(ours, policy, s)}
    counts = count_parameters(ours)
    warmup = None
    if s.compile:
        twin = random_model(cfg, "classification", 2, dtype=torch.float32, device=s.device, seed=0)
        steppers["ours_compiled"] = ours_stepper(twin, policy, s, compile=True)
        t0 = time.perf_counter()
        steppers["ours_compiled"](b)  # compiles forward and backward of every block
        warmup = time.perf_counter() - t0
    if with_hf:
        steppers["hf"] = hf_stepper(hf_twin(ours, cfg, policy, s), s)
        if s.common and policy != "full":  # under `full` every weight is an fp32 master already
            steppers["hf_common"] = hf_stepper(hf_twin(ours, cfg, policy, s, all_fp32=True), s)
    # First step from identical weights: the losses must agree (a check that both compute the same thing).
    first = {k: float(st(b)) for k, st in steppers.items()}
    if with_cache and steppers["ours"].with_cache is not None:
        steppers["ours_cache"] = steppers["ours"].with_cache(b)
    t = interleaved(steppers, b, s)
    tokens = s.batch * s.seq
    row = {"shape": shape, "policy": policy, "amp": AMP_NAMES[s.amp], "batch": s.batch,
           "seq": s.seq, "trainable": counts["trainable"], "total": counts["total"]}
    for k in steppers:
        row[f"{k}_tok_s"] = round(tokens / t[k], 1)
    if "hf" in t:
        row["ratio"] = round(t["hf"] / t["ours"], 3)
        row["first_loss_diff"] = round(abs(first["ours"] - first["hf"]), 5)
    if "hf_common" in t:
        row["ratio_common"] = round(t["hf_common"] / t["ours"], 3)
    if "ours_compiled" in t:
        row["compile_speedup"] = round(t["ours"] / t["ours_compiled"], 3)
        row["compile_warmup_s"] = round(warmup, 1)
        if "hf" in t:
            row["ratio_compiled"] = round(t["hf"] / t["ours_compiled"], 3)
    if "ours_cache" in t and "hf" in t:
        row["ratio_cache"] = round(t["hf"] / t["ours_cache"], 3)
    for k, st in steppers.items():
        if k == "ours_cache":
            continue
        resident = st.resident_bytes()
        row[f"{k}_mem_gib"] = round((resident + step_memory(st, b, s.device)) / 2**30, 3)
    if with_eval:
        with ExitStack() as stack:
            fns = {"ours": eval_fn(ours, False, s)}
            if s.compile:
                # The compiled twin's blocks compiled once, as predict() compiles them for a long pass (entering
                # InferenceCompiler per call would time the wrapping of 30 blocks, not the forward).
                twin = steppers["ours_compiled"].model
                stack.enter_context(InferenceCompiler(twin, True, 0))
                fns["ours_compiled"] = eval_fn(twin, False, s)
            if with_hf:
                fns["hf"] = eval_fn(steppers["hf"].model, True, s)
            for m in (st.model for st in steppers.values()):
                m.eval()
            with torch.inference_mode():
                t0 = time.perf_counter()
                outs = {k: fn(b).float() for k, fn in fns.items()}
                if s.compile:
                    row["eval_compile_warmup_s"] = round(time.perf_counter() - t0, 1)
            te = interleaved(fns, b, s)
        for k in fns:
            row[f"eval_{k}_tok_s"] = round(tokens / te[k], 1)
        if "hf" in te:
            row["eval_ratio"] = round(te["hf"] / te["ours"], 3)
            if "ours_compiled" in te:
                row["eval_ratio_compiled"] = round(te["hf"] / te["ours_compiled"], 3)
            row["eval_max_logit_diff"] = round((outs["ours"] - outs["hf"]).abs().max().item(), 4)
    del steppers, ours
    release_memory()
    return row


def bench_full_1b_sequential(s: Setting) -> dict:
    """Llama-1B `full` on CPU: ours, freed, then theirs (both at once do not fit); not interleaved."""
    shape, policy = "llama-3.2-1b", "full"
    cfg = config(shape)
    b = batch(cfg, s.batch, s.seq, s.device)
    ours = random_model(cfg, "classification", 2, dtype=torch.float32, seed=0)
    sd_path = Path("/tmp/llama_ft_bench_1b.pt")
    torch.save(ours.state_dict(), sd_path)
    step = ours_stepper(ours, policy, s)
    step(b)
    t_ours = statistics.median(timed(step, b, s.steps, s.device) for _ in range(s.reps))
    del ours, step
    release_memory()
    ours = build_model(cfg, "classification", 2)
    ours.load_state_dict(torch.load(sd_path, mmap=True), assign=True)
    prepare_model(ours, TrainConfig(policy=policy), s.frozen_dtype, s.device)
    hf = hf_twin(ours, cfg, policy, s)
    del ours
    sd_path.unlink()
    step = hf_stepper(hf, s)
    step(b)
    t_hf = statistics.median(timed(step, b, s.steps, s.device) for _ in range(s.reps))
    tokens = s.batch * s.seq
    return {"shape": shape, "policy": policy, "amp": AMP_NAMES[s.amp], "batch": s.batch,
            "seq": s.seq, "ours_tok_s": round(tokens / t_ours, 1), "hf_tok_s": round(tokens / t_hf, 1),
            "ratio": round(t_hf / t_ours, 3), "note": "sequential, not interleaved"}


def table(rows: list[dict], cols: list[str]) -> str:
    cols = [c for c in cols if any(c in r for r in rows)]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 2, seq 64, 1 step x 3 reps")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES + ("tiny",))
    ap.add_argument("--policies", nargs="+", default=list(POLICIES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2, help="steps per timed repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "none"),
                    help="autocast dtype of both libraries' steps (none: fp32, as on a CPU without bf16 dot products)")
    ap.add_argument("--full-1b", action="store_true", help="also run Llama-1B `full` on CPU (~25 GiB; sequential)")
    ap.add_argument("--no-hf", action="store_true", help="ours only")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also time ours with each decoder block compiled")
    ap.add_argument("--compile-mode", help="torch.compile mode of that column (default: TrainConfig.compile's)")
    ap.add_argument("--no-common", action="store_true", help="skip transformers with all-fp32 weights")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.steps, args.reps = 2, 64, 1, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    s = Setting(torch.device(args.device), {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[args.amp],
                args.batch, args.seq, args.steps, args.reps, common=not args.no_common, compile=args.compile,
                compile_mode=args.compile_mode)
    rows, skipped = [], []
    for shape in args.shapes:
        for policy in args.policies:
            if shape == "llama-3.2-1b" and policy == "full" and s.device.type == "cpu":
                if args.full_1b:
                    rows.append(bench_full_1b_sequential(s))
                else:
                    skipped.append("llama-3.2-1b full (needs ~25 GiB; pass --full-1b)")
                continue
            rows.append(bench_policy(shape, policy, s, with_hf=not args.no_hf, with_eval=policy == "head"))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            save(args.json, s, rows, skipped)  # after every row: a run stopped at its time limit keeps them
    save(args.json, s, rows, skipped)
    print(table(rows, ["shape", "policy", "batch", "seq", "ours_tok_s", "hf_tok_s", "ratio", "hf_common_tok_s",
                       "ratio_common", "ours_compiled_tok_s", "compile_speedup", "ratio_compiled",
                       "compile_warmup_s", "ours_mem_gib", "hf_mem_gib", "eval_ratio", "eval_ratio_compiled"]))
    for sk in skipped:
        print(f"skipped: {sk}")
    return 0


def save(path: str | None, s: Setting, rows: list[dict], skipped: list[str]) -> dict:
    """The results so far, as JSON; written to `path` (whole, through a temporary file) when given."""
    import transformers
    result = {"device": str(s.device), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "transformers": transformers.__version__, "steps": rows, "skipped": skipped}
    if s.device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(s.device)
    if path:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(path)
    return result


if __name__ == "__main__":
    sys.exit(main())
