"""Files that survive a kill: atomic writes, folders published whole, folder fsyncs, and the sweep of what dead
processes left (files named after a PID, such as partial exports and trunk-cache maps, are stale once their process
is gone)."""
from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
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


def write_atomic(path: str | Path, data: str | bytes | Callable[[Path], object]) -> Path:
    """Write a file whole or not at all: a temporary sibling, fsynced, then renamed over `path`. Readers and a
    kill at any instant see the old file or the new one, never half of either. `data` may be a function that
    writes the file at the path it is given (a writer that wants a path, such as safetensors' save_file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if callable(data):
            data(tmp)
            mode = "rb"
        else:
            mode = "wb"
        with open(tmp, mode) as f:
            if mode == "wb":
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


# ------------------------------------------------------------------ folders published whole
# A folder is built in `.NAME.partial-PID-*` and renamed to NAME; an existing NAME it replaces is first moved to
# `.NAME.old-PID-*`. A kill between those two renames leaves no NAME: `restore_moved_aside` puts the old one back.
def _partial_prefix(final: Path) -> str:
    return f".{final.name}.partial-"


def _old_prefix(final: Path) -> str:
    return f".{final.name}.old-"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def restore_moved_aside(final: str | Path) -> bool:
    """Put back the folder a dead process moved aside from `final` (killed between the two renames of
    `publish_folder`) when nothing is at `final`; True when one was put back."""
    final = Path(final)
    if final.exists() or final.is_symlink() or not final.parent.is_dir():
        return False
    olds = left_by_dead_processes(final.parent, _old_prefix(final))
    for old in sorted(olds, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        try:
            os.rename(old, final)
        except OSError:  # another process put one back first
            continue
        return True
    return False


def sweep_dead_publishes(final: str | Path) -> None:
    """Restore what a dead publisher moved aside from `final`, then remove its partial and old folders."""
    final = Path(final)
    restore_moved_aside(final)
    for prefix in (_old_prefix(final), _partial_prefix(final)):
        for stale in left_by_dead_processes(final.parent, prefix):
            _remove(stale)


def publish_folder(build: Callable[[Path], object], final: str | Path,
                   keep_existing: Callable[[Path], bool]) -> Path:
    """Run `build` into a hidden sibling folder of `final`, then rename it to `final` (one filesystem: atomic).

    A `final` already there when the build is done (left before, or written meanwhile by another process) is
    kept, and the new folder discarded, when `keep_existing(final)` is true; else it is replaced, and removed
    only once the new folder is in place. `keep_existing` may raise to refuse the replacement. A failed build
    leaves nothing; a killed one leaves hidden folders that `sweep_dead_publishes` removes (or restores).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_dead_publishes(final)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    partial = final.parent / f"{_partial_prefix(final)}{tag}"
    partial.mkdir()
    old = None
    try:
        build(partial)
        while True:
            if (final.exists() or final.is_symlink()) and keep_existing(final):
                return final
            if final.exists() or final.is_symlink():
                old = final.parent / f"{_old_prefix(final)}{tag}"
                os.rename(final, old)
            try:
                os.rename(partial, final)
                break
            except OSError:
                if old is not None:
                    os.rename(old, final)
                    raise
                if not final.exists():  # not a folder that appeared meanwhile: a real error
                    raise
    finally:
        _remove(partial)
    if old is not None:
        _remove(old)
    return final


def utf8_lines(path: str | Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, a leading byte-order mark skipped; a byte that is not UTF-8 raises
    `error` naming the file, the line and the column."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{path}, line {n}: byte {raw[e.start]:#04x} at column {e.start + 1} is not UTF-8; "
                            "save the file as UTF-8.") from None


def jsonl_objects(path: str | Path, error: type[Exception] = ValueError,
                  hint: str = "write one JSON object a line") -> Iterator[tuple[int, dict]]:
    """(line number, object) of a JSON Lines file (blank lines skipped); a line that is not a JSON object raises
    `error` as `FILE:LINE: what; hint`."""
    for line, text in utf8_lines(path, error):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise error(f"{path}:{line}: not JSON ({e.msg}); {hint}.") from None
        if not isinstance(obj, dict):
            raise error(f"{path}:{line}: a JSON {type(obj).__name__}, not an object; {hint}.")
        yield line, obj
