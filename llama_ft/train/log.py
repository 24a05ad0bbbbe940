"""What a run reports while it runs: the JSONL step log and memory readings."""
from __future__ import annotations

import json
import math
import resource
from pathlib import Path

import torch

from llama_ft.files import write_atomic
from llama_ft.heap import resident_bytes


def memory_bytes(device: torch.device) -> dict[str, int]:
    """{"current", "peak"}: CUDA allocator bytes on a GPU, the process's resident set on CPU."""
    if device.type == "cuda":
        return {"current": torch.cuda.memory_allocated(device), "peak": torch.cuda.max_memory_allocated(device)}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    current = resident_bytes()
    return {"current": peak if current is None else current, "peak": peak}


class JsonlLog:
    """Appends one JSON object per line to `path` (None: discards); flushed each line so a kill loses none."""

    def __init__(self, path: str | Path | None, resume_step: int | None = None):
        self.f = None
        if path is None:
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.exists():
            # Steps after the checkpoint are replayed on resume: drop their old lines (and a line torn by a
            # crash mid-write), rewriting the log atomically so a kill now loses none of it.
            keep = []
            for ln in path.read_text().splitlines():
                try:
                    entry = json.loads(ln)
                except json.JSONDecodeError:
                    continue
                if entry.get("step", 0) <= resume_step:
                    keep.append(ln)
            write_atomic(path, "".join(ln + "\n" for ln in keep))
        elif resume_step is None and path.exists():
            path.unlink()
        self.f = open(path, "a")  # noqa: SIM115 (open for the whole run, closed by close())

    def write(self, **entry) -> None:
        if self.f is None:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in entry.items()}
        self.f.write(json.dumps(clean) + "\n")
        self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None
