"""Hand freed host memory back to the operating system between the phases and steps of a CPU run.

glibc's malloc keeps the chunks a program frees resident, to reuse them. A CPU training step allocates and frees
gigabytes of activations whose sizes change with every batch's length, so the freed chunks rarely fit the next
requests: the heap fragments, and the process's resident memory climbs step after step to well above what is live
(BENCHMARKS.md, "Host memory"). `malloc_trim(0)` returns every free page of every arena; it costs milliseconds
against a step's seconds. Other C libraries (musl, macOS, Windows) do not have it, and do not grow this way for
the same reason, so there it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

# Off only to measure what trimming buys (benchmarks/host_memory.py).
TRIM = True
# A training step trims after its optimizer update; with this, after every micro-batch's backward as well, which
# lowers the step's peak (the next micro-batch starts from a trimmed heap) at the cost of faulting the pages in
# again (BENCHMARKS.md, "Host memory").
EACH_MICRO_BATCH = False
# After its update a step trims only once the resident set has grown this much since the last trim. A short step
# (a batch of SST-2 sentences) frees little, and the next step reuses those pages where they are; handing them
# back after every step made each step fault them in again (BENCHMARKS.md, session 13). A long step's activations
# fragment the heap and pass this at once, so such steps trim as before.
STEP_GROWTH = 512 * 2**20

# oneDNN, which runs the CPU's matrix multiplies, keeps a compiled kernel with its own buffers for each matmul
# shape it has seen, 1,024 of them by default. A training step needs a few dozen; with length-grouped batches
# almost every micro-batch brings new shapes, so the cache fills with ones that rarely come back and holds them
# resident: about half of what a run's resident memory gains step after step (BENCHMARKS.md, session 8).
ONEDNN_PRIMITIVE_CACHE = 128


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_free_memory() -> bool:
    """Return the heap's free pages to the operating system; True when the C library could (glibc)."""
    trim = _malloc_trim()
    if trim is None or not TRIM:
        return False
    trim(0)
    return True


def resident_bytes() -> int | None:
    """The process's resident set in bytes (Linux's /proc), None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class StepTrim:
    """Called after each training step: release_free_memory once the resident set has grown by `growth` bytes
    (STEP_GROWTH) since the last release, and every time where the resident set cannot be read or `growth` is 0
    (a resident set that shrank since the last release would otherwise skip a step)."""

    def __init__(self, growth: int | None = None):
        self.growth = STEP_GROWTH if growth is None else growth
        self.mark: int | None = None

    def __call__(self) -> bool:
        now = resident_bytes()
        if self.growth and now is not None and self.mark is not None and now - self.mark < self.growth:
            return False
        released = release_free_memory()
        self.mark = resident_bytes() if released else None
        return released


def bound_onednn_cache(capacity: int = ONEDNN_PRIMITIVE_CACHE) -> bool:
    """Cap oneDNN's kernel cache at `capacity` shapes unless the user has chosen (ONEDNN_ or DNNL_
    PRIMITIVE_CACHE_CAPACITY); True when this set it. oneDNN reads the setting when it builds its first kernel,
    so `import llama_ft` calls this before any computation; later calls do not change a running cache."""
    if any(f"{p}_PRIMITIVE_CACHE_CAPACITY" in os.environ for p in ("ONEDNN", "DNNL")):
        return False
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(capacity)
    return True
