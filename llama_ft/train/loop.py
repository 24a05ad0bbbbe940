"""The training loop: `train_step` (one optimizer step, written out), `train` around it, `predict`."""
from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from llama_ft import heap
from llama_ft.heap import keep_freed_pages, release_free_memory
from llama_ft.model.flops import device_peak, training_flops
from llama_ft.model.lora import MergedTraining, merged_adapters, merged_dtype
from llama_ft.model.params import count_parameters
from llama_ft.model.policies import apply_policy, parse_policy
from llama_ft.train.batching import collate, epoch_batches, example_lengths, padding_waste, sorted_batches, split_batch
from llama_ft.train.checkpoint import (
    SHARDED,
    find_checkpoint,
    fresh_tmp,
    load_trainable,
    load_weights,
    publish,
    read_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    trainable_state,
    write_weights,
)
from llama_ft.train.compile import COMPILING, Compiler, InferenceCompiler, auto_min_seconds
from llama_ft.train.config import TrainConfig, inference_amp, resolve_amp, resolve_device, resolve_frozen_dtype
from llama_ft.train.distributed import all_reduce_sum, barrier, init_distributed, no_sync, wrap
from llama_ft.train.divergence import DivergenceError, DivergenceGuard, NonFiniteError, TrainingError, chance_loss
from llama_ft.train.fsdp import check_fsdp, full_tensor, load_sharded, save_sharded
from llama_ft.train.fingerprint import check_same_run, run_fingerprint
from llama_ft.train.graphs import begin_forward, own_grads, resolve_cuda_graphs
from llama_ft.train.log import JsonlLog, memory_bytes
from llama_ft.train.optim import build_optimizer, build_scheduler
from llama_ft.train.trunk import (
    TrunkCache,
    TrunkSplit,
    bottom_forward,
    can_cache,
    feature_dtype,
    find_split,
    flop_ratio,
    top_forward,
)


@dataclass
class TrainResult:
    """What a run did. losses/lrs/grad_norms: one entry per optimizer step (mean loss over the step's examples)."""
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    steps: int = 0
    wall_seconds: float = 0.0
    train_seconds: float = 0.0          # inside train_step only
    epoch_seconds: list[float] = field(default_factory=list)  # steps of each epoch (+ the cache build in the first)
    tokens_per_second: float = 0.0      # real (non-pad) tokens over train_seconds, all processes
    model_flops: float = 0.0            # training FLOPs of the real tokens (llama_ft.model.flops), all processes
    peak_flops: float | None = None     # per process, what mfu divides by (TrainConfig.peak_flops)
    mfu: float | None = None            # model_flops / train_seconds / (peak_flops x processes)
    real_tokens: int = 0
    padded_tokens: int = 0
    padding_waste: float = 0.0          # 1 - real / padded tokens
    trainable_params: int = 0
    total_params: int = 0
    metrics: list[dict] = field(default_factory=list)   # [{"step": s, **eval metrics}]
    best_metric: float | None = None
    best_step: int | None = None
    trunk_cache: dict | None = None     # {"kind", "start_layer", "bytes", "file", "seconds", "flop_ratio"}
    compile: dict | None = None  # {"at_step", "eager_step_seconds", "warmup_seconds", "frames_compiled", "cuda_graphs"}
    resumed_from: int | None = None
    paths: dict[str, str] = field(default_factory=dict)


def task_loss(task: str, out, attention_mask: Tensor, label: Tensor | None = None,
              start_positions: Tensor | None = None, end_positions: Tensor | None = None) -> Tensor:
    """Sum over the batch of each example's loss (fp32): cross-entropy, or for QA the mean of start/end CE.
    QA logits at padding are masked out, so the loss does not depend on how much a batch is padded."""
    if task == "classification":
        return F.cross_entropy(out.float(), label, reduction="sum")
    pad = ~attention_mask.bool()
    start, end = (x.float().masked_fill(pad, torch.finfo(torch.float32).min) for x in out)
    return (F.cross_entropy(start, start_positions, reduction="sum")
            + F.cross_entropy(end, end_positions, reduction="sum")) / 2


class TaskLoss(nn.Module):
    """The model and its task loss on a batch: the frozen bottom under no_grad, the trainable top with autograd.

    This is the module DDP wraps, so a gradient is averaged over processes whichever path the batch takes."""

    def __init__(self, model: nn.Module, split: TrunkSplit, feature_dtype: torch.dtype):
        super().__init__()
        self.model, self.split, self.feature_dtype = model, split, feature_dtype

    def forward(self, input_ids: Tensor | None, attention_mask: Tensor, features: Tensor | None = None,
                **targets: Tensor) -> Tensor:
        if features is None and self.split.has_frozen_bottom:
            with torch.no_grad():
                features = bottom_forward(self.model, self.split, input_ids, attention_mask)
            # The dtype the trunk cache stores, so cached and uncached training see the same inputs.
            features = features.to(self.feature_dtype)
        out = top_forward(self.model, self.split, input_ids, attention_mask, features)
        return task_loss(self.model.task, out, attention_mask, **targets)


def train_step(loss_model: nn.Module, micro_batches: list[dict], optimizer: torch.optim.Optimizer,
               scheduler, scaler: torch.amp.GradScaler, params: list[Tensor], *, step_examples: int,
               world: int, amp_dtype: torch.dtype | None, device: torch.device,
               max_grad_norm: float | None, graphs: bool = False) -> tuple[float, float]:
    """One optimizer step over this process's micro-batches; returns (mean loss over the step, grad norm).
    `graphs`: the compiled blocks replay CUDA graphs (llama_ft.train.graphs)."""
    loss_sum = torch.zeros((), device=device)
    for i, mb in enumerate(micro_batches):
        if graphs:
            begin_forward()
        # DDP all-reduces gradients only in the last micro-batch's backward.
        with no_sync(loss_model, skip=i < len(micro_batches) - 1):
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                loss = loss_model(**mb)
            # Gradient of the mean over all the step's examples; DDP divides by `world`, so multiply it back.
            scaler.scale(loss * (world / step_examples)).backward()
        if graphs and i < len(micro_batches) - 1:
            own_grads(params)
        loss_sum += loss.detach()
        if device.type == "cpu" and heap.EACH_MICRO_BATCH and i < len(micro_batches) - 1:
            release_free_memory()
    loss_mean = all_reduce_sum(loss_sum).item() / step_examples
    scaler.unscale_(optimizer)
    grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(params, max_grad_norm or math.inf, foreach=True)).item()
    if not math.isfinite(loss_mean) or (not math.isfinite(grad_norm) and not scaler.is_enabled()):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteError(f"loss {loss_mean}, gradient norm {grad_norm}")
    scaler.step(optimizer)  # with fp16, skips the update when the scaled gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return loss_mean, grad_norm


def apply_training_policy(model: nn.Module, cfg: TrainConfig) -> None:
    """Apply cfg.policy to `model` as train() does (LoRA adapters initialised under cfg.seed), unless the model
    carries it already. Called before train(), it lets the caller read the trainable weights as they start
    (trainable_state), which train() then trains as they are."""
    policy = parse_policy(cfg.policy)
    current = getattr(model, "policy", None)
    if current is None:
        torch.manual_seed(cfg.seed)  # LoRA adapters' initialisation
        apply_policy(model, policy)
    elif current != policy:
        raise ValueError(f"the model already carries policy {current} but TrainConfig.policy is {policy}; "
                         "build a fresh model or train with the same policy.")


def prepare_model(model: nn.Module, cfg: TrainConfig, frozen_dtype: torch.dtype, device: torch.device) -> None:
    """Apply the policy (once), move to `device`, trainable weights fp32 masters, frozen ones `frozen_dtype`."""
    apply_training_policy(model, cfg)
    model.to(device)
    for p in model.parameters():
        p.data = p.data.to(torch.float32 if p.requires_grad else frozen_dtype)
    model.backbone.gradient_checkpointing = cfg.grad_checkpointing
    model.train()


def prepare_for_training(model: nn.Module, cfg: TrainConfig) -> None:
    """Do now what train() does to `model` before its first step: apply cfg.policy (apply_training_policy), move
    it to cfg's device, keep the trainable weights as fp32 masters and cast the frozen ones to the frozen dtype
    (bf16 under autocast). train() then finds it done. A pass before training (a recipe's untrained row) so runs
    the weights the fine-tuned pass runs: bf16 instead of fp32 cast at every call, faster, and one compiled
    graph for both passes (BENCHMARKS.md, session 24). The frozen weights are cast once either way: the same
    values as train() would cast. The adapters start at zero, so the model computes what it did."""
    device = resolve_device(cfg.device)
    prepare_model(model, cfg, resolve_frozen_dtype(cfg.frozen_dtype, resolve_amp(cfg.amp, device)), device)


@dataclass(frozen=True)
class Geometry:
    """How the training set is cut into optimizer steps over all processes."""
    global_batch: int       # examples per optimizer step
    n_micro: int            # micro-batches per step over all processes
    steps_per_epoch: int
    total_steps: int
    n_epochs: int

    def end_of_epoch(self, step: int) -> bool:
        return step % self.steps_per_epoch == 0 or step == self.total_steps

    def epoch(self, lengths: np.ndarray, epoch: int, cfg: TrainConfig, world: int) -> list[np.ndarray]:
        """The epoch's step batches (a last one smaller than `world` gives nobody work and is dropped)."""
        return [b for b in epoch_batches(lengths, self.global_batch, cfg.seed, epoch, cfg.length_grouping)
                if len(b) >= world]


def batch_geometry(n_examples: int, cfg: TrainConfig, world: int) -> Geometry:
    """Steps and micro-batches for `n_examples` under cfg's batch sizes on `world` processes."""
    global_batch = cfg.global_batch or cfg.batch_size * world
    if global_batch % (cfg.batch_size * world):
        raise ValueError(f"global_batch {global_batch} is not a multiple of batch_size {cfg.batch_size} x "
                         f"{world} processes; pick global_batch = k * {cfg.batch_size * world}.")
    if n_examples < world:
        raise ValueError(f"train_set has {n_examples} examples, fewer than the {world} processes.")
    steps_per_epoch = n_examples // global_batch + (n_examples % global_batch >= world)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    return Geometry(global_batch, global_batch // cfg.batch_size, steps_per_epoch, total_steps,
                    math.ceil(total_steps / steps_per_epoch))


# TrainResult fields a checkpoint carries, so that a resumed run reports the whole run.
RESUMED = ("losses", "lrs", "grad_norms", "metrics", "best_metric", "best_step", "real_tokens", "padded_tokens",
           "train_seconds", "model_flops")


class Checkpoints:
    """When checkpoints are due, writing them (rank 0), and the last good one (named when a run stops)."""

    def __init__(self, cfg: TrainConfig, geo: Geometry, rank: int, fingerprint: dict):
        self.cfg, self.geo, self.fingerprint, self.sharded = cfg, geo, fingerprint, cfg.shard == "fsdp"
        self.out_dir = Path(cfg.output_dir) if cfg.output_dir else None
        self.writer = self.out_dir if rank == 0 else None
        self.last_good: tuple[Path, int] | None = None

    def due(self, step: int) -> bool:
        every = self.cfg.checkpoint_every
        return self.out_dir is not None and bool((every and step % every == 0) or step == self.geo.total_steps
                                                 or (not every and self.geo.end_of_epoch(step)))

    def save(self, step: int, model: nn.Module, res: TrainResult, optimizer, scheduler, scaler) -> None:
        """Everything a resumed run needs to continue exactly: the trainable weights, then as tensors, numbers
        and strings the optimizer, schedule, scaler, RNG, the result so far and the run's fingerprint."""
        state = {"step": step, "fingerprint": self.fingerprint, "config": self.cfg.to_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                 **{k: getattr(res, k) for k in RESUMED}}
        if self.sharded:  # every process writes its shards, rank 0 the rest
            if self.writer:
                fresh_tmp(self.writer)
            barrier()
            state["optimizer"] = save_sharded(self.out_dir / "checkpoint.tmp" / SHARDED, model, optimizer)
            if self.writer:
                res.paths["checkpoint"] = str(publish(self.writer, state))
        elif self.writer:
            state["optimizer"] = optimizer.state_dict()
            res.paths["checkpoint"] = str(save_checkpoint(self.writer, model, state))
        barrier()
        self.last_good = (self.out_dir / "checkpoint", step)


def restore(ckpt: Path, model: nn.Module, optimizer, scheduler, scaler, res: TrainResult,
            fingerprint: dict) -> dict[str, Tensor] | None:
    """Continue from `ckpt`: weights, optimizer, schedule, scaler, RNG and the result so far; returns this run's
    best weights (None when there are none to restore). Refuses a checkpoint of other settings or data."""
    state = read_state(ckpt)
    check_same_run(state["fingerprint"], fingerprint, ckpt)
    if (ckpt / SHARDED).is_dir():  # the fingerprint's `shard` made sure this run is sharded too
        load_sharded(ckpt / SHARDED, model, optimizer, state["optimizer"], next(model.parameters()).device)
    else:
        load_weights(ckpt, model)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    for k in RESUMED:
        setattr(res, k, state[k])
    res.resumed_from = state["step"]
    best = _best_of_this_run(ckpt.parent, res.best_step)
    if best is None:
        res.best_metric = res.best_step = None
    return best


def _best_of_this_run(out_dir: Path, best_step: int | None) -> dict | None:
    """On resume: best/ weights when the checkpoint names a best step and best/ was written at that step.
    Otherwise None: a best/ left by an earlier run in the same folder is not this run's, and one written after
    the checkpoint (a kill between the two) is re-earned when the resumed run replays those steps."""
    path = out_dir / "best" / "model.safetensors"
    if best_step is None or not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        written_at = (f.metadata() or {}).get("step")
    if written_at != str(best_step):
        warnings.warn(f"{path} was written at step {written_at}, not at the checkpoint's best step {best_step}; "
                      "the best weights are chosen again from the evaluations after the resume.", stacklevel=4)
        return None
    return load_file(str(path))


def start_trunk_cache(model: nn.Module, split: TrunkSplit, train_set: list[dict], lengths: np.ndarray,
                      cfg: TrainConfig, n_epochs: int, device: torch.device, amp_dtype: torch.dtype | None,
                      feature_dtype: torch.dtype, out_dir: Path | None,
                      show_progress: bool) -> tuple[TrunkCache | None, dict | None]:
    """(cache, its report) when cfg.trunk_cache asks for it and the policy leaves a frozen deterministic bottom:
    the bottom's output once, then every epoch trains the top alone. (None, None) otherwise."""
    usable = can_cache(model, split)
    if cfg.trunk_cache is True and not usable:
        raise ValueError(f"trunk_cache=True but policy {cfg.policy} leaves no frozen deterministic bottom to "
                         "cache (the embeddings or layer 0 train); use trunk_cache='auto' or False.")
    if not (usable and (cfg.trunk_cache is True or (cfg.trunk_cache == "auto" and n_epochs > 1))):
        return None, None
    t0 = time.perf_counter()
    cache = TrunkCache(model, split, train_set, lengths, batch_size=2 * cfg.batch_size, device=device,
                       amp_dtype=amp_dtype, dtype=feature_dtype, ram_bytes=cfg.trunk_cache_ram_gib * 2**30,
                       tmp_dir=out_dir / "tmp" if out_dir else None, show_progress=show_progress,
                       compile=False if cfg.shard == "fsdp" else cfg.compile)
    return cache, {"kind": split.kind, "start_layer": split.start, "bytes": cache.nbytes,
                   "file": str(cache.path) if cache.path else None, "seconds": time.perf_counter() - t0,
                   "flop_ratio": flop_ratio(model, split)}


def micro_batch(train_set: list[dict], idx: np.ndarray, pad: int, device: torch.device,
                cache: TrunkCache | None, multiple: int = 1) -> dict:
    """TaskLoss's inputs for the examples `idx`: ids, or the trunk cache's features when there is one, their
    length rounded up to a multiple of `multiple`."""
    b = collate([train_set[i] for i in idx], pad, multiple)
    mb = {"attention_mask": b["attention_mask"].to(device), **{k: v.to(device) for k, v in _targets(b).items()}}
    if cache is not None:
        return {**mb, "input_ids": None, "features": cache.batch(idx, device, b["attention_mask"].shape[1])}
    return {**mb, "input_ids": b["input_ids"].to(device), "features": None}


def _targets(b: dict) -> dict:
    return {k: b[k] for k in ("label", "start_positions", "end_positions") if k in b}


@torch.no_grad()
def loss_after_update(task_module: TaskLoss, micro_batches: list[dict], amp_dtype: torch.dtype | None,
                      device: torch.device, step_examples: int) -> float:
    """The step's mean loss under the weights its update produced (all processes): what a checkpoint holds."""
    total = torch.zeros((), device=device)
    for mb in micro_batches:
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            total += task_module(**mb)
    return all_reduce_sum(total).item() / step_examples


@torch.inference_mode()
def eval_loss(model: nn.Module, eval_set: list[dict], batch_size: int, amp_dtype: torch.dtype | None,
              device: torch.device) -> float:
    """Mean task_loss over `eval_set` (the training loss's own definition); LoRA adapters merged for a pass of
    MERGE_MIN_TOKENS or more, as in predict."""
    total = 0.0
    lengths = example_lengths(eval_set)
    batches = sorted_batches(lengths, batch_size)
    with merged_adapters(model, padding_waste(lengths, batches)[1] >= MERGE_MIN_TOKENS):
        for idx in batches:
            b = collate([eval_set[i] for i in idx], model.config.pad_token_id)
            mask = b["attention_mask"].to(device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                out = model(b["input_ids"].to(device), mask)
            total += task_loss(model.task, out, mask, **{k: v.to(device) for k, v in _targets(b).items()}).item()
    return total / len(eval_set)


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if metric.endswith("loss") else new > old


class Evaluation:
    """Evaluation points and the best weights by cfg.select_metric (kept in memory, written to best/)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, eval_fn, eval_set: list[dict] | None,
                 amp_dtype: torch.dtype | None, device: torch.device, out_dir: Path | None, through=None):
        self.model, self.cfg, self.eval_fn, self.eval_set = model, cfg, eval_fn, eval_set
        self.through = through or (lambda fn: fn())
        self.amp_dtype, self.device, self.out_dir = amp_dtype, device, out_dir
        self.best_weights: dict[str, Tensor] | None = None

    def due(self, step: int, total_steps: int) -> bool:
        if self.eval_fn is None and self.eval_set is None:
            return False
        return step == total_steps or bool(self.cfg.eval_every and step % self.cfg.eval_every == 0)

    def _metrics(self) -> dict:
        metrics = dict(self.eval_fn(self.model)) if self.eval_fn is not None else {}
        if self.eval_set is not None:
            metrics["eval_loss"] = eval_loss(self.model, self.eval_set, 2 * self.cfg.batch_size, self.amp_dtype,
                                             self.device)
        return metrics

    def __call__(self, at: int, res: TrainResult, log: JsonlLog) -> None:
        self.model.eval()
        metrics = self.through(self._metrics)
        self.model.train()
        res.metrics.append({"step": at, **metrics})
        log.write(step=at, eval=metrics)
        m = self.cfg.select_metric
        if m is None:
            return
        if m not in metrics:
            raise ValueError(f"select_metric {m!r} is not among the eval metrics {sorted(metrics)}; "
                             "set TrainConfig.select_metric to one of them.")
        if _better(m, metrics[m], res.best_metric):
            res.best_metric, res.best_step = float(metrics[m]), at
            self.best_weights = trainable_state(self.model)
            if self.out_dir is not None:
                path = write_weights(self.out_dir / "best", self.best_weights, {"step": at, m: metrics[m]})
                res.paths["best"] = str(path)


class StepLog:
    """One JSONL line per step (loss, lr, grad norm, tokens/s, MFU, memory) and the progress bar."""

    def __init__(self, log: JsonlLog, cfg: TrainConfig, total_steps: int, step: int, show: bool,
                 device: torch.device, peak: float | None, reprobe: Callable[[], float] | None = None):
        self.log, self.log_every, self.total, self.device, self.peak = log, cfg.log_every, total_steps, device, peak
        self.reprobe = reprobe
        self.bar = tqdm(total=total_steps, initial=step, desc=f"train {cfg.policy}", unit="step", disable=not show,
                        dynamic_ncols=True)
        self.noted = False

    def note(self, text: str) -> None:
        """Say `text` in the bar until the next step's figures replace it (COMPILING before the step that
        compiles)."""
        self.bar.set_postfix_str(text)
        self.noted = True

    def __call__(self, res: TrainResult, *, step: int, epoch: int, loss: float, lr: float, grad_norm: float,
                 real: int, padded: int, seconds: float, flops: float) -> None:
        for k, v in (("losses", loss), ("lrs", lr), ("grad_norms", grad_norm)):
            getattr(res, k).append(v)
        res.train_seconds += seconds
        res.real_tokens += real
        res.padded_tokens += padded
        res.model_flops += flops
        mem = memory_bytes(self.device)
        if self.peak and self.reprobe is not None and flops / seconds > self.peak:
            # An MFU above 100% proves that the probe ran beside other work and read low: probe once more, between
            # steps (outside any step's seconds), and let this and later steps divide by the faster probe (a
            # peak_flops the user gave comes back unchanged).
            self.peak, self.reprobe = self.reprobe(), None
        mfu = {"mfu": flops / seconds / self.peak} if self.peak else {}
        self.log.write(step=step, epoch=epoch, loss=loss, lr=lr, grad_norm=grad_norm, tokens_per_s=real / seconds,
                       **mfu, seconds=seconds, real_tokens=real, padded_tokens=padded, memory=mem["current"],
                       peak_memory=mem["peak"])
        self.bar.update(1)
        if step % self.log_every == 0 or step == self.total or self.noted:
            self.noted = False
            shown = {"mfu": f"{mfu['mfu']:.1%}"} if mfu else {}
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{real / seconds:,.0f}", **shown, lr=f"{lr:.2e}")

    def close(self) -> None:
        self.bar.close()
        self.log.close()


def stopped(error: type[TrainingError], log: JsonlLog, step: int, why: str, last_good: tuple[Path, int] | None,
            **entry) -> TrainingError:
    """The error that ends a run gone wrong at `step`, logged, naming the last good checkpoint."""
    log.write(step=step, **{"non_finite" if error is NonFiniteError else "diverged": why}, **entry)
    good = f"{last_good[0]} (step {last_good[1]})" if last_good else "none (set output_dir and checkpoint_every)"
    where = " before the optimizer step" if error is NonFiniteError else ""
    return error(f"step {step}: {why}; training stopped{where}. Last good checkpoint: {good}. Lower lr, raise "
                 "warmup_ratio, clip harder (max_grad_norm) or use amp='bf16' instead of fp16.")


def finish(res: TrainResult, step: int, world: int, t_start: float) -> TrainResult:
    """The whole run's figures from its per-step sums."""
    if res.trunk_cache is not None and res.epoch_seconds and res.resumed_from is None:
        res.epoch_seconds[0] += res.trunk_cache["seconds"]
    res.steps = step
    res.tokens_per_second = res.real_tokens / res.train_seconds if res.train_seconds else 0.0
    res.padding_waste = 1 - res.real_tokens / res.padded_tokens if res.padded_tokens else 0.0
    if res.peak_flops and res.train_seconds:
        res.mfu = res.model_flops / res.train_seconds / (res.peak_flops * world)
    res.wall_seconds = time.perf_counter() - t_start
    return res


# Runs that trained at least this long probe the matmul peak again at the end (resolve_peak): the probe takes well
# under a second in a dtype the hardware computes, seconds in bf16 on a CPU without bf16 dot products, which short
# runs (the tests) should not pay on every call.
REPROBE_MIN_SECONDS = 60.0


def resolve_peak(peak_flops: float | str | None, device: torch.device, amp_dtype: torch.dtype | None,
                 again: bool = False) -> float | None:
    """The FLOP/s MFU divides by, per process (TrainConfig.peak_flops). again: after training, the fastest of a
    new probe and the first (device_peak): the first runs as training starts, beside whatever starts with it."""
    if peak_flops is None or not isinstance(peak_flops, str):
        return peak_flops
    return device_peak(device, amp_dtype or torch.float32, again=again)


def train(model: nn.Module, train_set: list[dict], cfg: TrainConfig, eval_set: list[dict] | None = None,
          eval_fn=None) -> TrainResult:
    """Fine-tune `model` in place on `train_set` under `cfg`; returns a TrainResult.

    train_set: dicts with `input_ids` (list[int]) and `label` (classification) or `start_positions` and
    `end_positions` (QA); the engine right-pads with model.config.pad_token_id. eval_fn(model) -> dict of
    metrics runs at eval points and at the end (on every process under torchrun); with eval_set, `eval_loss`
    is added. After training the model holds the best weights by cfg.select_metric (else the last ones);
    frozen weights stay in the frozen dtype. cfg.resume: continue from output_dir/checkpoint. Under torchrun
    the processes share the work of each global batch; only rank 0 writes files. Raises NonFiniteError or
    DivergenceError (both TrainingError) when training goes wrong; no checkpoint holds diverged weights.
    """
    t_start = time.perf_counter()
    rank, world, device = init_distributed(resolve_device(cfg.device))
    amp_dtype = resolve_amp(cfg.amp, device)
    frozen_dtype = resolve_frozen_dtype(cfg.frozen_dtype, amp_dtype)
    features_in = feature_dtype(amp_dtype)
    torch.manual_seed(cfg.seed)
    prepare_model(model, cfg, frozen_dtype, device)
    if device.type == "cpu":
        keep_freed_pages()  # before the trunk cache's pass and the first step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the step log's peak_memory is this run's
    split, lengths, geo = find_split(model), example_lengths(train_set), batch_geometry(len(train_set), cfg, world)
    ckpts = Checkpoints(cfg, geo, rank, run_fingerprint(cfg, geo.global_batch, amp_dtype, frozen_dtype, train_set))
    sharded = cfg.shard == "fsdp"
    home = next(model.parameters()).device
    if sharded:
        check_fsdp(world, amp_dtype, cfg.compile)
        # The caller's model waits in host memory, so a device holds only its shards of the copy (fully_shard
        # moves each block to the device as it shards it); it comes back with the trained weights at the end.
        model.to("cpu")
    # FSDP2 turns the modules it shards into its own classes: it gets a copy, and `model` the trained weights.
    work = copy.deepcopy(model) if sharded else model
    task_module = TaskLoss(work, split, features_in)
    loss_model = wrap(task_module, world, device, cfg.shard, list(work.backbone.layers), amp_dtype)
    # Under FSDP every forward pass runs inside the root's, which gathers the weights outside the blocks.
    def through(fn, *args):
        return loss_model(call=partial(fn, *args)) if sharded else fn(*args)
    params = [p for p in work.parameters() if p.requires_grad]
    optimizer = build_optimizer(work, cfg.lr, cfg.weight_decay, device)
    scheduler = build_scheduler(optimizer, geo.total_steps, cfg.warmup_ratio, cfg.schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    counts = count_parameters(model)
    res = TrainResult(trainable_params=counts["trainable"], total_params=counts["total"])
    evaluate = Evaluation(work, cfg, eval_fn, eval_set, amp_dtype, device, ckpts.writer, through)
    if cfg.resume and (ckpt := find_checkpoint(ckpts.out_dir)) is not None:
        evaluate.best_weights = restore(ckpt, work, optimizer, scheduler, scaler, res, ckpts.fingerprint)
        ckpts.last_good = (ckpt, res.resumed_from)
    step = res.resumed_from or 0
    log = JsonlLog(ckpts.writer / "train_log.jsonl" if ckpts.writer else None, resume_step=res.resumed_from)
    res.paths.update({"log": str(ckpts.writer / "train_log.jsonl")} if ckpts.writer else {})
    cache, res.trunk_cache = through(start_trunk_cache, work, split, train_set, lengths, cfg, geo.n_epochs, device,
                                     amp_dtype, features_in, ckpts.out_dir, cfg.progress and rank == 0)
    flops = training_flops(model, cached_layers=split.start if cache is not None else 0)
    res.peak_flops = resolve_peak(cfg.peak_flops, device, amp_dtype)
    steplog = StepLog(log, cfg, geo.total_steps, step, cfg.progress and rank == 0, device,
                      res.peak_flops * world if res.peak_flops else None,
                      lambda: resolve_peak(cfg.peak_flops, device, amp_dtype, again=True) * world)
    guard = DivergenceGuard(cfg.divergence_factor, chance_loss(model.task, lengths, getattr(model, "num_labels", 2)),
                            res.losses, res.grad_norms)
    min_seconds = cfg.compile_min_seconds if cfg.compile_min_seconds is not None else auto_min_seconds(device.type)
    compile_mode = False if sharded else cfg.compile
    compiler = Compiler(work, compile_mode, min_seconds, lambda s: all_reduce_sum(
        torch.tensor(s, device=device)).item() / world,
        graphs=resolve_cuda_graphs(cfg.cuda_graphs, device.type, compile_mode, cfg.grad_checkpointing, world))
    epoch_t0, batches, trim = time.perf_counter(), {}, heap.StepTrim()
    merged = MergedTraining(work, merged_dtype(device, amp_dtype, world))
    if compiler.compiled:  # compile=True: the first step compiles
        steplog.note(COMPILING)
    try:
        while step < geo.total_steps:
            epoch, k = divmod(step, geo.steps_per_epoch)
            if epoch not in batches:
                batches = {epoch: geo.epoch(lengths, epoch, cfg, world)}
                step_tokens = padding_waste(lengths, batches[epoch])[0] / max(len(batches[epoch]), 1)
            batch, cap = batches[epoch][k], compiler.token_cap(cfg.token_cap(compiler.compiled), amp_dtype)
            multiple = partial(compiler.length_multiple, amp_dtype=amp_dtype)
            # The cap counts the tokens a piece is padded to: CPU_MAX_TOKENS guards what the compiled blocks see.
            pieces = partial(split_batch, batch, geo.n_micro, world=world, lengths=lengths, max_tokens=cap,
                             multiple=multiple)
            all_pieces = [p for r in range(world) for p in pieces(r)]
            real, padded = padding_waste(lengths, all_pieces, multiple)
            lr, t0 = optimizer.param_groups[0]["lr"], time.perf_counter()
            mbs = [micro_batch(train_set, p, model.config.pad_token_id, device, cache, multiple(int(lengths[p].max())))
                   for p in pieces(rank)]
            try:
                loss, gnorm = train_step(loss_model, mbs, optimizer, scheduler, scaler, params,
                                         step_examples=len(batch), world=world, amp_dtype=amp_dtype,
                                         device=device, max_grad_norm=cfg.max_grad_norm, graphs=compiler.replays)
            except NonFiniteError as e:
                raise stopped(NonFiniteError, log, step + 1, str(e), ckpts.last_good, lr=lr) from None
            merged.refresh()  # the adapters just changed
            if device.type == "cpu":  # the next step's activations differ in size: hand this step's back
                trim()
            dt, step = time.perf_counter() - t0, step + 1
            if why := guard.diverged(loss, gnorm):
                raise stopped(DivergenceError, log, step, why, ckpts.last_good, loss=loss, grad_norm=gnorm, lr=lr)
            guard.record(loss, gnorm)
            compiler.after_step(step, dt, geo.total_steps, real, step_tokens)
            steplog(res, step=step, epoch=epoch, loss=loss, lr=lr, grad_norm=gnorm, real=real, padded=padded,
                    seconds=dt, flops=flops.of_lengths(lengths[np.concatenate(all_pieces)]))
            if compiler.starts_after(step):
                steplog.note(COMPILING)
            if geo.end_of_epoch(step):
                res.epoch_seconds.append(time.perf_counter() - epoch_t0)
                epoch_t0 = time.perf_counter()
            if ckpts.due(step) or step == geo.total_steps:  # the updated weights, before anything keeps them
                with compiler.eager():
                    after = through(loss_after_update, task_module, mbs, amp_dtype, device, len(batch))
                if why := guard.diverged(after):
                    raise stopped(DivergenceError, log, step, f"after its update, {why}", ckpts.last_good, loss=after)
            if evaluate.due(step, geo.total_steps):
                with compiler.eager():
                    evaluate(step, res, log)
            if ckpts.due(step):
                ckpts.save(step, work, res, optimizer, scheduler, scaler)
    finally:
        merged.close()
        steplog.close()
        res.compile = compiler.finish()
        if cache is not None:
            cache.close()
        model.to(home)
    # The fastest probe of the process: one more after a long run; a short one reads the probes taken so far (the
    # step log's, if a step proved the first one low).
    res.peak_flops = resolve_peak(cfg.peak_flops, device, amp_dtype, again=res.train_seconds >= REPROBE_MIN_SECONDS)
    if evaluate.best_weights is not None:
        load_trainable(model, evaluate.best_weights, "best weights")
    elif sharded:
        load_trainable(model, trainable_state(work), "the trained weights")
    return finish(res, step, world, t_start)


# predict folds LoRA adapters into copies of their weights for a pass of at least this many (padded) tokens: the
# merge costs about what the unmerged adapters cost over a third of that (BENCHMARKS.md, session 9).
MERGE_MIN_TOKENS = 4096


@torch.inference_mode()
def predict(model: nn.Module, dataset: list[dict], batch_size: int = 64, amp: str = "auto",
            device: str | torch.device | None = None, progress: str | None = None, compile: bool | str = "auto",
            trunk: TrunkCache | None = None, unit: str = "example"):
    """Model outputs in dataset order: classification -> [N, num_labels] fp32 tensor; QA -> list of
    (start_logits, end_logits) fp32 1-D tensors trimmed to each example's length. Length-sorted batches,
    inference mode, autocast `amp` (auto, bf16, fp16 on CUDA, none; inference_amp); `progress`: a progress bar
    with this title, counting `unit`s; `compile`: the decoder blocks compiled for this pass (True, False, or
    `auto`: when it pays, InferenceCompiler).
    LoRA adapters are merged into copies of their weights for a pass of MERGE_MIN_TOKENS or more (merged_adapters).
    `trunk`: the frozen bottom's output for `dataset` (a TrunkCache of this model): only the trainable top runs
    (llama_ft.train.versions scores several versions of the top this way)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    amp_dtype = inference_amp(amp, model, device)
    if amp_dtype is None and any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("predict(amp='none') on a model with non-fp32 (e.g. bf16 frozen) weights; "
                         "use amp='bf16' or cast the model with model.float().")
    was_training = model.training
    model.eval()
    if device.type == "cpu":
        # The pass starts from a trimmed heap: training hands freed pages back only once they add up
        # (heap.StepTrim), and a pass after it would otherwise peak on top of what its last steps left free.
        keep_freed_pages()
        release_free_memory()
    lengths = example_lengths(dataset)
    if trunk is not None:
        trunk.check(model, lengths)
    pad = model.config.pad_token_id
    results: list = [None] * len(dataset)
    bar = tqdm(total=len(dataset), desc=progress, unit=unit, disable=progress is None, dynamic_ncols=True)
    batches = sorted_batches(lengths, batch_size)
    padded = padding_waste(lengths, batches)[1]
    compiler = InferenceCompiler(model, compile, padded, bar=bar)
    with merged_adapters(model, padded >= MERGE_MIN_TOKENS), compiler:
        for idx in batches:
            t0 = time.perf_counter()
            b = collate([dataset[i] for i in idx], pad)
            ids, mask = b["input_ids"].to(device), b["attention_mask"].to(device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                out = (model(ids, mask) if trunk is None
                       else top_forward(model, trunk.split, None, mask, trunk.batch(idx, device)))
            if model.task == "classification":
                for row, i in enumerate(idx):
                    results[i] = out[row].float().cpu()
            else:
                s, e = out[0].float().cpu(), out[1].float().cpu()
                for row, i in enumerate(idx):
                    results[i] = (s[row, :lengths[i]].clone(), e[row, :lengths[i]].clone())
            compiler.after_batch(time.perf_counter() - t0, b["input_ids"].numel())
            bar.update(len(idx))
    bar.close()
    model.train(was_training)
    if device.type == "cpu":
        release_free_memory()
    if model.task == "classification":
        return torch.stack(results) if results else torch.empty(0, model.num_labels)
    return results

