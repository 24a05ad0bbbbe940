"""The training loop: `train_step` (one optimizer step, written out), `train` around it, `predict`."""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from llama_ft.model.params import count_parameters
from llama_ft.model.policies import apply_policy, parse_policy
from llama_ft.train.batching import collate, epoch_batches, example_lengths, padding_waste, sorted_batches, split_batch
from llama_ft.train.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    load_trainable,
    rng_state,
    save_checkpoint,
    set_rng_state,
    trainable_state,
    write_weights,
)
from llama_ft.train.config import TrainConfig, resolve_amp, resolve_device, resolve_frozen_dtype
from llama_ft.train.distributed import all_reduce_sum, barrier, init_distributed, no_sync, wrap
from llama_ft.train.log import JsonlLog, memory_bytes
from llama_ft.train.optim import build_optimizer, build_scheduler
from llama_ft.train.trunk import (
    TrunkCache,
    TrunkSplit,
    bottom_forward,
    find_split,
    flop_ratio,
    is_deterministic,
    top_forward,
)


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN/inf; the run stopped before the optimizer step."""


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
    real_tokens: int = 0
    padded_tokens: int = 0
    padding_waste: float = 0.0          # 1 - real / padded tokens
    trainable_params: int = 0
    total_params: int = 0
    metrics: list[dict] = field(default_factory=list)   # [{"step": s, **eval metrics}]
    best_metric: float | None = None
    best_step: int | None = None
    trunk_cache: dict | None = None     # {"kind", "start_layer", "bytes", "file", "seconds", "flop_ratio"}
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
               max_grad_norm: float | None) -> tuple[float, float]:
    """One optimizer step over this process's micro-batches; returns (mean loss over the step, grad norm)."""
    loss_sum = torch.zeros((), device=device)
    for i, mb in enumerate(micro_batches):
        # DDP all-reduces gradients only in the last micro-batch's backward.
        with no_sync(loss_model, skip=i < len(micro_batches) - 1):
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                loss = loss_model(**mb)
            # Gradient of the mean over all the step's examples; DDP divides by `world`, so multiply it back.
            scaler.scale(loss * (world / step_examples)).backward()
        loss_sum += loss.detach()
    loss_mean = all_reduce_sum(loss_sum).item() / step_examples
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or math.inf, foreach=True).item()
    if not math.isfinite(loss_mean) or (not math.isfinite(grad_norm) and not scaler.is_enabled()):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteError(f"loss {loss_mean}, gradient norm {grad_norm}")
    scaler.step(optimizer)  # with fp16, skips the update when the scaled gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return loss_mean, grad_norm


def prepare_model(model: nn.Module, cfg: TrainConfig, frozen_dtype: torch.dtype, device: torch.device) -> None:
    """Apply the policy (once), move to `device`, trainable weights fp32 masters, frozen ones `frozen_dtype`."""
    policy = parse_policy(cfg.policy)
    current = getattr(model, "policy", None)
    if current is None:
        apply_policy(model, policy)
    elif current != policy:
        raise ValueError(f"the model already carries policy {current} but TrainConfig.policy is {policy}; "
                         "build a fresh model or train with the same policy.")
    model.to(device)
    for p in model.parameters():
        p.data = p.data.to(torch.float32 if p.requires_grad else frozen_dtype)
    model.backbone.gradient_checkpointing = cfg.grad_checkpointing
    if cfg.compile:
        for layer in model.backbone.layers:
            layer.compile()  # in place: parameter names and the state dict stay as they are
    model.train()


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
                      "the best weights are chosen again from the evaluations after the resume.", stacklevel=3)
        return None
    return load_file(str(path))


def _targets(b: dict) -> dict:
    return {k: b[k] for k in ("label", "start_positions", "end_positions") if k in b}


def _eval_loss(model: nn.Module, eval_set: list[dict], batch_size: int, amp: str, device) -> float:
    out = predict(model, eval_set, batch_size=batch_size, amp=amp, device=device)
    if model.task == "classification":
        labels = torch.tensor([ex["label"] for ex in eval_set])
        return F.cross_entropy(out, labels).item()
    total = 0.0
    for (s, e), ex in zip(out, eval_set):
        total += (F.cross_entropy(s[None], torch.tensor([ex["start_positions"]]))
                  + F.cross_entropy(e[None], torch.tensor([ex["end_positions"]]))).item() / 2
    return total / len(eval_set)


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if metric.endswith("loss") else new > old


def train(model: nn.Module, train_set: list[dict], cfg: TrainConfig, eval_set: list[dict] | None = None,
          eval_fn=None, resume: bool | None = None) -> TrainResult:
    """Fine-tune `model` in place on `train_set` under `cfg`; returns a TrainResult.

    train_set: dicts with `input_ids` (list[int]) and `label` (classification) or `start_positions` and
    `end_positions` (QA); the engine right-pads with model.config.pad_token_id. eval_fn(model) -> dict of
    metrics runs at eval points and at the end (on every process under torchrun); with eval_set, `eval_loss`
    is added. After training the model holds the best weights by cfg.select_metric (else the last ones);
    frozen weights stay in the frozen dtype. resume (or cfg.resume): continue from output_dir/checkpoint.
    Under torchrun the processes share the work of each global batch; only rank 0 writes files.
    """
    t_start = time.perf_counter()
    resume = cfg.resume if resume is None else resume
    device = resolve_device(cfg.device)
    rank, world, device = init_distributed(device)
    amp_dtype = resolve_amp(cfg.amp, device)
    frozen_dtype = resolve_frozen_dtype(cfg.frozen_dtype, amp_dtype)
    feature_dtype = torch.bfloat16 if amp_dtype is not None else torch.float32
    torch.manual_seed(cfg.seed)  # LoRA adapters' initialisation
    prepare_model(model, cfg, frozen_dtype, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the step log's peak_memory is this run's
    split = find_split(model)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else None
    writer = rank == 0 and out_dir is not None

    # Batch geometry: micro-batches per step over all processes, all cut from one global batch.
    global_batch = cfg.global_batch or cfg.batch_size * world
    if global_batch % (cfg.batch_size * world):
        raise ValueError(f"global_batch {global_batch} is not a multiple of batch_size {cfg.batch_size} x "
                         f"{world} processes; pick global_batch = k * {cfg.batch_size * world}.")
    n_micro = global_batch // cfg.batch_size
    lengths = example_lengths(train_set)
    if len(train_set) < world:
        raise ValueError(f"train_set has {len(train_set)} examples, fewer than the {world} processes.")
    steps_per_epoch = len(train_set) // global_batch + (len(train_set) % global_batch >= world)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    n_epochs = math.ceil(total_steps / steps_per_epoch)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, device)
    scheduler = build_scheduler(optimizer, total_steps, cfg.warmup_ratio, cfg.schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    counts = count_parameters(model)
    res = TrainResult(trainable_params=counts["trainable"], total_params=counts["total"])
    best_weights = None

    step = 0
    ckpt = find_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model)
        if state["global_batch"] != global_batch or state["seed"] != cfg.seed:
            raise ValueError(f"{ckpt} was written with global_batch={state['global_batch']}, seed={state['seed']};"
                             " resume with the same values, or delete the checkpoint to start afresh.")
        saved_amp = state.get("config", {}).get("amp", cfg.amp)
        if saved_amp != cfg.amp:
            raise ValueError(f"{ckpt} was written with amp={saved_amp!r}, this run asks for amp={cfg.amp!r} (the fp16 "
                             "gradient scaler's state cannot carry over); resume with the same amp.")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step = state["step"]
        for k in ("losses", "lrs", "grad_norms", "metrics", "best_metric", "best_step", "real_tokens",
                  "padded_tokens"):
            setattr(res, k, state[k])
        res.train_seconds = state.get("train_seconds", 0.0)  # absent from checkpoints of earlier versions
        res.resumed_from = step
        best_weights = _best_of_this_run(out_dir, res.best_step)
        if best_weights is None:
            res.best_metric = res.best_step = None
    log = JsonlLog(out_dir / "train_log.jsonl" if writer else None, resume_step=step if ckpt else None)
    if writer:
        res.paths["log"] = str(out_dir / "train_log.jsonl")

    # Frozen-trunk cache: the bottom's output once, then every epoch trains the top alone.
    usable = split.has_frozen_bottom and (split.start > 0 or not split.per_token) and is_deterministic(model, split)
    if cfg.trunk_cache is True and not usable:
        raise ValueError(f"trunk_cache=True but policy {cfg.policy} leaves no frozen deterministic bottom to "
                         "cache (the embeddings or layer 0 train); use trunk_cache='auto' or False.")
    cache = None
    if usable and (cfg.trunk_cache is True or (cfg.trunk_cache == "auto" and n_epochs > 1)):
        t0 = time.perf_counter()
        cache = TrunkCache(model, split, train_set, lengths, batch_size=2 * cfg.batch_size, device=device,
                           amp_dtype=amp_dtype, dtype=feature_dtype, ram_bytes=cfg.trunk_cache_ram_gib * 2**30,
                           tmp_dir=out_dir / "tmp" if out_dir else None, show_progress=cfg.progress and rank == 0)
        res.trunk_cache = {"kind": split.kind, "start_layer": split.start, "bytes": cache.nbytes,
                           "file": str(cache.path) if cache.path else None,
                           "seconds": time.perf_counter() - t0, "flop_ratio": flop_ratio(model, split)}

    loss_model = wrap(TaskLoss(model, split, feature_dtype), world, device)
    pad = model.config.pad_token_id

    def micro_batch(idx: np.ndarray) -> dict:
        b = collate([train_set[i] for i in idx], pad)
        mb = {"attention_mask": b["attention_mask"].to(device), **{k: v.to(device) for k, v in _targets(b).items()}}
        if cache is not None:
            mb.update(input_ids=None, features=cache.batch(idx, device))
        else:
            mb.update(input_ids=b["input_ids"].to(device), features=None)
        return mb

    def evaluate_now(at: int) -> None:
        nonlocal best_weights
        model.eval()
        metrics = dict(eval_fn(model)) if eval_fn is not None else {}
        if eval_set is not None:
            metrics["eval_loss"] = _eval_loss(model, eval_set, 2 * cfg.batch_size, cfg.amp, device)
        model.train()
        res.metrics.append({"step": at, **metrics})
        log.write(step=at, eval=metrics)
        m = cfg.select_metric
        if m is not None:
            if m not in metrics:
                raise ValueError(f"select_metric {m!r} is not among the eval metrics {sorted(metrics)}; "
                                 "set TrainConfig.select_metric to one of them.")
            if _better(m, metrics[m], res.best_metric):
                res.best_metric, res.best_step = float(metrics[m]), at
                best_weights = trainable_state(model)
                if writer:
                    res.paths["best"] = str(write_weights(out_dir / "best", best_weights, {"step": at, m: metrics[m]}))

    def checkpoint_now(at: int) -> None:
        if writer:
            state = {"step": at, "global_batch": global_batch, "seed": cfg.seed, "config": cfg.to_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict(), "rng": rng_state(), "losses": res.losses, "lrs": res.lrs,
                     "grad_norms": res.grad_norms, "metrics": res.metrics, "best_metric": res.best_metric,
                     "best_step": res.best_step, "real_tokens": res.real_tokens,
                     "padded_tokens": res.padded_tokens, "train_seconds": res.train_seconds}
            res.paths["checkpoint"] = str(save_checkpoint(out_dir, model, state))
        barrier()
    bar = tqdm(total=total_steps, initial=step, desc=f"train {cfg.policy}", unit="step",
               disable=not (cfg.progress and rank == 0), dynamic_ncols=True)
    epoch_t0, batches, batches_epoch = time.perf_counter(), None, None
    try:
        while step < total_steps:
            epoch, k = divmod(step, steps_per_epoch)
            if batches_epoch != epoch:
                batches = [b for b in epoch_batches(lengths, global_batch, cfg.seed, epoch, cfg.length_grouping)
                           if len(b) >= world]
                batches_epoch = epoch
            pieces = split_batch(batches[k], n_micro, rank, world)
            all_pieces = [p for r in range(world) for p in split_batch(batches[k], n_micro, r, world)]
            real, padded = padding_waste(lengths, all_pieces)
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            try:
                loss, gnorm = train_step(loss_model, [micro_batch(p) for p in pieces], optimizer, scheduler,
                                         scaler, params, step_examples=len(batches[k]), world=world,
                                         amp_dtype=amp_dtype, device=device, max_grad_norm=cfg.max_grad_norm)
            except NonFiniteError as e:
                log.write(step=step + 1, non_finite=str(e), lr=lr)
                last = find_checkpoint(out_dir)
                raise NonFiniteError(
                    f"step {step + 1}: {e}; training stopped before the optimizer step. Last good checkpoint: "
                    f"{last or 'none written (set output_dir and checkpoint_every)'}. Lower lr, raise warmup_ratio, "
                    "clip harder (max_grad_norm) or use amp='bf16' instead of fp16.") from None
            dt = time.perf_counter() - t0
            step += 1
            res.losses.append(loss)
            res.lrs.append(lr)
            res.grad_norms.append(gnorm)
            res.train_seconds += dt
            res.real_tokens += real
            res.padded_tokens += padded
            mem = memory_bytes(device)
            log.write(step=step, epoch=epoch, loss=loss, lr=lr, grad_norm=gnorm, tokens_per_s=real / dt,
                      seconds=dt, real_tokens=real, padded_tokens=padded, memory=mem["current"],
                      peak_memory=mem["peak"])
            bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{real / dt:,.0f}", lr=f"{lr:.2e}")
            end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
            if end_of_epoch:
                res.epoch_seconds.append(time.perf_counter() - epoch_t0)
                epoch_t0 = time.perf_counter()
            if (cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps) and (eval_fn or eval_set):
                evaluate_now(step)
            if step == total_steps and (eval_fn is not None or eval_set is not None):
                evaluate_now(step)
            every = cfg.checkpoint_every
            if out_dir is not None and ((every and step % every == 0) or (not every and end_of_epoch)
                                        or step == total_steps):
                checkpoint_now(step)
    finally:
        bar.close()
        log.close()
        if cache is not None:
            cache.close()
    if res.trunk_cache is not None and res.epoch_seconds:
        res.epoch_seconds[0] += res.trunk_cache["seconds"] if res.resumed_from is None else 0.0
    if best_weights is not None:
        load_trainable(model, best_weights, "best weights")
    res.steps = step
    res.tokens_per_second = res.real_tokens / res.train_seconds if res.train_seconds else 0.0
    res.padding_waste = 1 - res.real_tokens / res.padded_tokens if res.padded_tokens else 0.0
    res.wall_seconds = time.perf_counter() - t_start
    return res


@torch.inference_mode()
def predict(model: nn.Module, dataset: list[dict], batch_size: int = 64, amp: str = "bf16",
            device: str | torch.device | None = None):
    """Model outputs in dataset order: classification -> [N, num_labels] fp32 tensor; QA -> list of
    (start_logits, end_logits) fp32 1-D tensors trimmed to each example's length. Length-sorted batches,
    inference mode, autocast `amp` (bf16, fp16 on CUDA, none)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    amp_dtype = resolve_amp(amp, device)
    if amp_dtype is None and any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("predict(amp='none') on a model with non-fp32 (e.g. bf16 frozen) weights; "
                         "use amp='bf16' or cast the model with model.float().")
    was_training = model.training
    model.eval()
    lengths = example_lengths(dataset)
    pad = model.config.pad_token_id
    results: list = [None] * len(dataset)
    for idx in sorted_batches(lengths, batch_size):
        b = collate([dataset[i] for i in idx], pad)
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            out = model(b["input_ids"].to(device), b["attention_mask"].to(device))
        if model.task == "classification":
            for row, i in enumerate(idx):
                results[i] = out[row].float().cpu()
        else:
            s, e = out[0].float().cpu(), out[1].float().cpu()
            for row, i in enumerate(idx):
                results[i] = (s[row, :lengths[i]].clone(), e[row, :lengths[i]].clone())
    model.train(was_training)
    if model.task == "classification":
        return torch.stack(results) if results else torch.empty(0, model.num_labels)
    return results
