"""A run's output folder: refuse to clobber a previous run, write every result file atomically."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from llama_ft.hf.export import save_pretrained
from llama_ft.model.config import hub_id_for

# Files that mark a folder as holding a finished or running llama_ft run.
RUN_MARKERS = ("metrics.json", "run_config.json", "results.md", "checkpoint")
# Everything a recipe or the engine writes there: --overwrite removes all of it, so that no file of the old run
# (predictions of a row the new run skips, a plot) sits beside the new results as if it were theirs.
RUN_OUTPUTS = (*RUN_MARKERS, "checkpoint.tmp", "checkpoint.old", "best", "model", "tmp", "train_log.jsonl",
               "loss.png", "confusion.png", "predictions.json", "predictions_eval.json",
               "predictions_zero_shot.json")


class RunDirError(ValueError):
    """The output folder cannot be used as asked; the message says which flag fixes it."""


def prepare_output_dir(path: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Create `path`, or refuse when it holds a previous run (unless --overwrite, or --resume to continue it)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--output-dir {path} is a file; give a folder.")
    previous = path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)
    if previous and not (overwrite or resume):
        found = ", ".join(m for m in RUN_MARKERS if (path / m).exists())
        raise RunDirError(f"--output-dir {path} holds a previous run ({found}). "
                          "Pass --overwrite to replace it, --resume to continue it, or choose another folder.")
    if previous and overwrite and not resume:
        for m in RUN_OUTPUTS:
            target = path / m
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write a file atomically (temp file + rename): readers never see half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "__dict__"):
        return vars(x)
    return str(x)


def command_line() -> str:
    """The command that started this process, for run configs and model cards."""
    return " ".join(["python"] + [a if a and " " not in a else repr(a) for a in sys.argv])


def device_and_amp(device: str = "auto", amp: str = "auto", study: bool = False) -> tuple[str, str]:
    """The --device and --amp a recipe runs with: auto = CUDA when present; fp16 on CUDA for the study's
    preset (it trained fp16 on T4s), bf16 otherwise."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if amp == "auto":
        amp = "fp16" if device.startswith("cuda") and study else "bf16"
    return device, amp


def finish_run(out: Path, model, tokenizer, *, source: str, scores: dict, card: dict, results_md: str,
               metrics: dict, push_to_hub: str | None = None, private: bool = False) -> None:
    """Export the fine-tuned model to out/model (with its model card), then write results.md and, last,
    metrics.json (a run's completion mark); optionally upload the model to the Hub."""
    card = dict(card)
    if hub_id_for(source):
        card["base_model"] = hub_id_for(source)
    save_pretrained(model, out / "model", tokenizer=tokenizer, overwrite=True, metrics=scores, card=card)
    write_text(out / "results.md", results_md)
    write_json(out / "metrics.json", metrics)
    if push_to_hub:
        print("pushed:", push_to_hub(out / "model", push_to_hub, private=private))


def add_run_arguments(ap, output_dir: str) -> None:
    """The flags every recipe shares: autocast, seed, zero-shot rows, output folder, Hub upload, device,
    resume, compile."""
    ap.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                    help="autocast dtype; auto = fp16 on CUDA under --preset study (as the study), else bf16")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot rows")
    ap.add_argument("--output-dir", default=output_dir)
    ap.add_argument("--overwrite", action="store_true", help="replace a previous run in --output-dir")
    ap.add_argument("--push-to-hub", metavar="OWNER/NAME", help="upload the fine-tuned model to the Hub")
    ap.add_argument("--private", action="store_true", help="with --push-to-hub: a private repo")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its checkpoint")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile each decoder block (aimed at CUDA; see TrainConfig.compile)")
