"""What both recipes do around the engine: the device and autocast dtype they run with, the TrainConfig their
flags make, the summary of a training run they write to metrics.json, and its TensorBoard scalars."""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import time
from pathlib import Path

from llama_ft.metrics import SetupError
from llama_ft.train import TrainConfig
from llama_ft.train.config import AMP_DTYPES, resolve_amp, resolve_device
from llama_ft.train.loop import TrainResult


def device_and_amp(device: str = "auto", amp: str = "auto", study: bool = False) -> tuple[str, str]:
    """(device, amp) as concrete names (`cuda`, `bf16`): the engine's rules (`resolve_device`, `resolve_amp`),
    plus one of the recipes': `auto` under the study's preset is fp16 on CUDA, as the study trained on T4s."""
    dev = resolve_device(device)
    if amp == "auto" and study and dev.type == "cuda":
        amp = "fp16"
    dtype = resolve_amp(amp, dev)
    return str(dev), next(name for name, d in AMP_DTYPES.items() if d == dtype)


def train_config(args: argparse.Namespace, out: Path, device: str, amp: str) -> TrainConfig:
    """The engine's settings from the shared flags (see llama_ft.cli.flags)."""
    return TrainConfig(policy=args.policy, lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
                       warmup_ratio=args.warmup_ratio, batch_size=args.batch_size, global_batch=args.global_batch,
                       micro_batch_tokens=args.micro_batch_tokens,
                       compiled_micro_batch_tokens=args.compiled_micro_batch_tokens,
                       epochs=args.epochs, max_steps=args.max_steps, max_grad_norm=args.max_grad_norm or None,
                       amp=amp, seed=args.seed, grad_checkpointing=args.grad_checkpointing, compile=args.compile,
                       cuda_graphs=args.cuda_graphs,
                       output_dir=str(out), eval_every=args.eval_every, select_metric=args.save_best,
                       log_every=args.log_every, device=device, resume=args.resume,
                       shard=args.shard)


def wants_evaluation(args: argparse.Namespace) -> bool:
    """True when the run evaluates during training (and so holds a validation slice out of the train rows)."""
    return bool(args.eval_every or args.save_best)


def peak_memory_bytes() -> int:
    """This process's peak resident set so far (the whole run: loading, zero-shot rows, training, scoring)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class Phases:
    """A run's phases for metrics.json: `timings` ("<phase>_seconds", and "total_seconds" from `start`, a
    time.perf_counter() reading, once `finish` is called) and `peaks` (the process's peak resident memory when
    each phase ended, so the phase that set the run's peak is the first to show it)."""

    def __init__(self, start: float):
        self.start = start
        self.timings: dict[str, float] = {}
        self.peaks: dict[str, int] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.timings[f"{name}_seconds"] = time.perf_counter() - t0
        self.peaks[name] = peak_memory_bytes()

    def carve(self, name: str, seconds: float, out_of: str) -> None:
        """Record `seconds` of the finished phase `out_of` as phase `name` of their own (work two phases shared
        one pass for): they leave `out_of`'s timing, and `name` gets its peak."""
        self.timings[f"{out_of}_seconds"] -= seconds
        self.timings[f"{name}_seconds"] = seconds
        self.peaks[name] = self.peaks[out_of]

    def finish(self) -> dict[str, float]:
        self.timings["total_seconds"] = time.perf_counter() - self.start
        return self.timings


def train_summary(result: TrainResult) -> dict:
    """The `train` section of metrics.json: throughput, steps, sizes, cache, evaluations."""
    return {"tokens_per_second": result.tokens_per_second, "steps": result.steps,
            "padding_waste": result.padding_waste, "trainable_params": result.trainable_params,
            "total_params": result.total_params, "trunk_cache": result.trunk_cache,
            "epoch_seconds": result.epoch_seconds, "final_loss": result.losses[-1] if result.losses else None,
            "evaluations": result.metrics, "best_metric": result.best_metric, "best_step": result.best_step,
            "train_seconds": result.train_seconds, "mfu": result.mfu, "peak_flops": result.peak_flops,
            "compile": result.compile, "peak_memory_bytes": peak_memory_bytes()}


# The step-log fields written as TensorBoard scalars (train/<field>); evaluations become eval/<metric>.
STEP_SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu")
TENSORBOARD_MISSING = "--report-to tensorboard needs the tensorboard package: pip install tensorboard"


def tensorboard_available() -> bool:
    """True when torch's SummaryWriter can be imported (it needs the optional tensorboard package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def write_tensorboard(log_path: str | Path, folder: str | Path) -> Path:
    """TensorBoard event files in `folder` (replacing any there) with the scalars of a train_log.jsonl:
    train/loss, train/lr, train/grad_norm, train/tokens_per_s, train/mfu per step, eval/<metric> per evaluation."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SetupError(TENSORBOARD_MISSING) from None
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)  # a resumed run rewrites the whole log, so its events start afresh too
    writer = SummaryWriter(str(folder))
    try:
        for line in Path(log_path).read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill
            step = entry.get("step")
            scalars = {f"train/{k}": entry.get(k) for k in STEP_SCALARS}
            scalars |= {f"eval/{k}": v for k, v in (entry.get("eval") or {}).items()}
            for tag, value in scalars.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and step is not None:
                    writer.add_scalar(tag, value, step)
    finally:
        writer.close()
    return folder


def report_to(args: argparse.Namespace, out: Path, result: TrainResult) -> None:
    """Write the run's scalars where --report-to asks (nothing for `none`), from the process that wrote the log."""
    log = result.paths.get("log")
    if args.report_to == "tensorboard" and log and Path(log).is_file():
        print("tensorboard:", write_tensorboard(log, out / "tensorboard"))
