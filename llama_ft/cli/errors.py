"""The recipes' one error handler: an expected failure is one line (what, which file, the fix) and an exit
status, never a traceback (`--debug` shows it). Library messages name API arguments (`policy=`); here they
become the flags that set them (`--policy`)."""
from __future__ import annotations

import errno
import pickle
import re
import sys
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist
from huggingface_hub.errors import HfHubHTTPError
from safetensors import SafetensorError

from llama_ft.metrics import SetupError
from llama_ft.train import TrainingError
from llama_ft.train.distributed import barrier, rank_and_world

# API argument -> the flag that sets it, for messages raised below the recipes.
FLAGS = {
    "policy": "--policy", "max_length": "--max-length", "stride": "--stride", "batch_size": "--batch-size",
    "global_batch": "--global-batch",
    "micro_batch_tokens": "--micro-batch-tokens", "compiled_micro_batch_tokens": "--compiled-micro-batch-tokens",
    "epochs": "--epochs", "max_steps": "--max-steps", "lr": "--lr",
    "weight_decay": "--weight-decay", "warmup_ratio": "--warmup-ratio", "schedule": "--schedule",
    "max_grad_norm": "--max-grad-norm", "amp": "--amp", "device": "--device", "seed": "--seed",
    "eval_every": "--eval-every", "select_metric": "--save-best", "log_every": "--log-every",
    "output_dir": "--output-dir", "compile": "--compile", "cuda_graphs": "--cuda-graphs",
    "grad_checkpointing": "--grad-checkpointing",
    "resume": "--resume", "shard": "--shard", "text_column": "--text-column", "text_pair_column": "--text-pair-column",
    "label_column": "--label-column", "predict_file": "--predict-file", "dataset_config": "--dataset-config",
}
_API_ARG = re.compile(r"\b(?:TrainConfig\.)?(" + "|".join(FLAGS) + r")=")
# Exit statuses: 2 for input the user can fix before running (flags, data, model, folder), 1 for a run that
# failed on its way (divergence, disk, network), 130 for Ctrl-C (the shell's convention for SIGINT).
USAGE, FAILED, INTERRUPTED = 2, 1, 130
CORRUPT = (SafetensorError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile)
# The HTTP clients huggingface_hub has used (requests, then httpx): their errors are connection failures.
HTTP_CLIENTS = ("requests", "httpx", "httpx2", "urllib3")


class PeerFailure(Exception):
    """Process `rank` of a torchrun job failed (`message`, `status`), and every process stops with it: rank 0
    reports the message, the others stop silently (llama_ft.cli.ranks.together raises it on all of them)."""

    def __init__(self, message: str, status: int, rank: int):
        super().__init__(message)
        self.status, self.rank = status, rank


def lost_peer(err: BaseException) -> bool:
    """True for the error a collective raises when another process of a torchrun job has died (gloo: its
    connection closed; NCCL: DistBackendError): the process that died reported its own failure."""
    if rank_and_world()[1] == 1:
        return False
    return isinstance(err, dist.DistError) or (isinstance(err, RuntimeError) and any(
        m in str(err) for m in ("Connection closed by peer", "Connection reset by peer")))


def _from_http_client(err: BaseException) -> bool:
    return isinstance(err, HfHubHTTPError) or any(c.__module__.split(".")[0] in HTTP_CLIENTS
                                                  for c in type(err).__mro__)


def as_flags(message: str) -> str:
    """`message` with each API argument (`policy=`, `TrainConfig.max_length=`) written as its flag."""
    return _API_ARG.sub(lambda m: FLAGS[m.group(1)] + " ", message)


def _checkpoint_hint(output_dir: str | Path | None, resume: bool) -> str:
    if resume and output_dir is not None:
        return (f"the checkpoint in {Path(output_dir) / 'checkpoint'} is damaged; delete that folder to start "
                "afresh (or run without --resume)")
    return "a weights file of --model is damaged; download or convert the model again"


def describe(err: BaseException, output_dir: str | Path | None = None, resume: bool = False) -> tuple[str, int]:
    """(one line for the user, exit status) for an expected failure."""
    if isinstance(err, PeerFailure):
        return str(err), err.status
    if isinstance(err, TrainingError):
        return f"training diverged: {as_flags(str(err))}", FAILED
    if isinstance(err, SetupError):
        return str(err), FAILED
    if isinstance(err, CORRUPT) or (isinstance(err, RuntimeError) and "PytorchStreamReader" in str(err)):
        return f"{_checkpoint_hint(output_dir, resume)} ({type(err).__name__}: {err}).", USAGE
    if _from_http_client(err):
        return (f"cannot reach the Hugging Face Hub ({type(err).__name__}: {err}); check the network and "
                "HF_TOKEN, or pass local files (--model FOLDER, --data FILE)."), FAILED
    if isinstance(err, OSError):
        where = f" {err.filename}" if err.filename else ""
        fix = {errno.ENOSPC: "free disk space or choose another --output-dir",
               errno.EROFS: "choose a writable --output-dir", errno.EACCES: "choose a writable --output-dir",
               errno.ENOENT: "check the path"}.get(err.errno, "check the path and the disk")
        return f"{err.strerror or err}:{where}; {fix}.", FAILED
    return as_flags(str(err)), USAGE


def expected(err: BaseException) -> bool:
    """True for the failures a recipe reports in one line; anything else is a bug and keeps its traceback."""
    if isinstance(err, RuntimeError) and not isinstance(err, (TrainingError, SetupError)):
        return "PytorchStreamReader" in str(err)  # torch.load of a truncated state.pt
    return (isinstance(err, (TrainingError, SetupError, ValueError, OSError, PeerFailure, *CORRUPT))
            or _from_http_client(err))


def run_guarded(body: Callable[[], int], *, debug: bool = False, output_dir: str | Path | None = None,
                resume: bool = False) -> int:
    """body()'s exit status; an expected failure prints one line to stderr and returns its status instead
    (under torchrun, ranks other than 0 name themselves: `error (rank 1): ...`)."""
    try:
        return body()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as err:
        if not (expected(err) or lost_peer(err)):
            raise
        if debug:
            traceback.print_exc()
        if lost_peer(err):
            return FAILED
        line, status = describe(err, output_dir, resume)
        rank = rank_and_world()[0]
        if isinstance(err, PeerFailure):
            if rank == 0:
                print(f"error{f' (rank {err.rank})' if err.rank else ''}: {line}", file=sys.stderr)
            barrier()  # no process exits (and so torchrun kills none) before rank 0 has cleaned up and reported
            return status
        print(f"error{f' (rank {rank})' if rank else ''}: {line}", file=sys.stderr)
        return status
