"""A run's output folder: a previous run is refused, continued (--resume) or replaced (--overwrite), and a
replaced run is only deleted once the new one has finished.

--overwrite moves the old run's outputs into `<folder>/.previous-<pid>/`; the new run writes beside it. When the
new run ends with metrics.json written the old outputs are deleted; when it fails (any exception, Ctrl-C) its
partial outputs are removed and the old ones moved back. A process killed in between leaves the aside folder:
the next run in that folder finds it (its PID is gone) and restores it when the killed run never wrote
metrics.json, or deletes it when that run had finished.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from llama_ft.files import fsync_dir, left_by_dead_processes, write_atomic, write_json
from llama_ft.hf.export import save_pretrained
from llama_ft.hf.hub import push_to_hub
from llama_ft.model.config import hub_id_for

# Files that mark a folder as holding a finished or running llama_ft run.
RUN_MARKERS = ("metrics.json", "run_config.json", "results.md", "checkpoint")
# Everything a recipe or the engine writes there: --overwrite moves all of it aside, so that no file of the old
# run (predictions of a row the new run skips, a plot) sits beside the new results as if it were theirs.
RUN_OUTPUTS = (*RUN_MARKERS, "checkpoint.tmp", "checkpoint.old", "best", "model", "tmp", "train_log.jsonl",
               "loss.png", "confusion.png", "predictions.json", "predictions_eval.json",
               "predictions_zero_shot.json", "predictions.tsv", "tensorboard")
ASIDE = ".previous-"
DONE = "metrics.json"  # written last: a run is finished exactly when it exists


class RunDirError(ValueError):
    """The output folder cannot be used as asked; the message says which flag fixes it."""


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _remove_outputs(folder: Path) -> None:
    for name in RUN_OUTPUTS:
        _remove(folder / name)


def _move_back(folder: Path, aside: Path) -> None:
    """The outputs in `aside` back into `folder`, replacing whatever a failed run wrote; `aside` removed."""
    _remove_outputs(folder)
    for entry in aside.iterdir():
        os.replace(entry, folder / entry.name)
    aside.rmdir()
    fsync_dir(folder)


def sweep_aside(folder: Path) -> list[Path]:
    """Settle the aside folders of killed runs in `folder`: restored when the killed run never finished,
    deleted when it had; returns the ones it restored."""
    restored = []
    for aside in sorted(left_by_dead_processes(folder, ASIDE)):
        if (folder / DONE).exists():
            shutil.rmtree(aside)
        else:
            _move_back(folder, aside)
            restored.append(aside)
    return restored


class RunFolder:
    """`with RunFolder(path, overwrite, resume) as out:` the run's folder (a Path) for the block's duration.

    A previous run there is refused unless `overwrite` (moved aside, deleted when the block ends with
    metrics.json written, restored otherwise) or `resume` (left in place for the engine to continue)."""

    def __init__(self, path: str | Path, overwrite: bool = False, resume: bool = False):
        self.path, self.overwrite, self.resume = Path(path), overwrite, resume
        self.aside: Path | None = None
        self.created = False

    def __enter__(self) -> Path:
        path = self.path
        if path.exists() and not path.is_dir():
            raise RunDirError(f"--output-dir {path} is a file; give a folder.")
        if path.is_dir():
            for restored in sweep_aside(path):
                print(f"{path}: restored the previous run from {restored.name} (its replacement was killed "
                      "before it finished)", file=sys.stderr)
        found = [m for m in RUN_MARKERS if (path / m).exists()]
        if found and not (self.overwrite or self.resume):
            raise RunDirError(f"--output-dir {path} holds a previous run ({', '.join(found)}). "
                              "Pass --overwrite to replace it, --resume to continue it, or choose another folder.")
        self.created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        if found and self.overwrite and not self.resume:
            self.aside = path / f"{ASIDE}{os.getpid()}"
            self.aside.mkdir()
            for name in RUN_OUTPUTS:
                if (path / name).exists() or (path / name).is_symlink():
                    os.replace(path / name, self.aside / name)
            fsync_dir(self.aside)
            fsync_dir(path)
        return path

    def __exit__(self, exc_type, exc, tb) -> None:
        # metrics.json is written before the Hub upload: a failed upload does not undo a finished run.
        finished = (self.path / DONE).exists()
        if self.aside is not None:
            if finished:
                shutil.rmtree(self.aside)
            else:
                _move_back(self.path, self.aside)
        elif not finished and self.created and not any(self.path.iterdir()):
            self.path.rmdir()  # a run that failed before writing anything leaves no empty folder behind


def command_line() -> str:
    """The command that started this process, for run configs and model cards."""
    return " ".join(["python"] + [a if a and " " not in a else repr(a) for a in sys.argv])


def finish_run(out: Path, model, tokenizer, *, source: str, scores: dict, card: dict, results_md: str,
               metrics: dict, repo_id: str | None = None, private: bool = False) -> None:
    """Export the fine-tuned model to out/model (with its model card), then write results.md and, last,
    metrics.json (a run's completion mark); with `repo_id`, upload the model to that Hub repo."""
    card = dict(card)
    if hub_id_for(source):
        card["base_model"] = hub_id_for(source)
    save_pretrained(model, out / "model", tokenizer=tokenizer, overwrite=True, metrics=scores, card=card)
    write_atomic(out / "results.md", results_md)
    write_json(out / DONE, metrics)
    if repo_id:
        print("pushed:", push_to_hub(out / "model", repo_id, private=private))
