"""Whether a process still runs: files named after a PID (partial exports, trunk-cache maps) are stale once
their process is gone, and can be removed by the next run."""
from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True when `pid` runs on this host, or when that cannot be told (another user's process, no permission):
    only a certainly dead process's files are ever removed."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def left_by_dead_processes(folder: Path, prefix: str) -> list[Path]:
    """The entries of `folder` named `prefix` + a PID (+ anything not a digit) whose process is gone."""
    out = []
    for p in folder.glob(f"{prefix}*"):
        rest = p.name[len(prefix):]
        pid = rest[:len(rest) - len(rest.lstrip("0123456789"))]
        if pid and not pid_alive(int(pid)):
            out.append(p)
    return out
