"""Whether a process still runs: files named after a PID (partial exports, trunk-cache maps) are stale once
their process is gone, and can be removed by the next run."""
from __future__ import annotations

import os


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
