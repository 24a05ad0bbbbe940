"""Files that survive a kill: atomic writes, folder fsyncs, and the sweep of what dead processes left (files
named after a PID, such as partial exports and trunk-cache maps, are stale once their process is gone)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


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


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it, a new file) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write a file whole or not at all: a temporary sibling, fsynced, then renamed over `path`. Readers and a
    kill at any instant see the old file or the new one, never half of either."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "__dict__"):
        return vars(x)
    return str(x)


def write_json(path: str | Path, obj: Any) -> Path:
    """`obj` as indented JSON, atomically (numpy/torch values as lists, paths as strings)."""
    return write_atomic(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")
