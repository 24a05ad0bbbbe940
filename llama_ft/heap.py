"""Keep the host memory a CPU run frees for its next batch, and hand it back to the operating system between steps
and phases.

A CPU training step or inference pass allocates and frees gigabytes of activations, batch after batch. glibc's
malloc, left to itself, gives large blocks mappings of their own and unmaps them when freed, and hands back the
free top of its heap, so each batch faulted its activations' pages in anew, zeroed by the kernel first:
keep_freed_pages has it keep them. Kept, they fragment: each batch's lengths differ, freed chunks do not always
fit the next requests, and the resident memory would climb step after step to well above what is live
(BENCHMARKS.md, "Host memory"). `malloc_trim(0)` returns every free page of every arena, in milliseconds; the
engine calls it after a step once the resident set has grown (StepTrim: a long step's activations pass that at
once) and at the start and end of every inference pass. Other C libraries (musl, macOS, Windows) have neither
call, and do not grow this way for the same reason, so there this module does nothing.
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

# glibc's mallopt parameter numbers.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
# Off only to measure what it buys (benchmarks/host_memory.py): keep_freed_pages.
KEEP_FREED_PAGES = True
# free() hands the heap's top back once this much is free there (glibc: 128 KiB, raised as mapped blocks are freed,
# up to 64 MiB). A pass or step frees most of what it allocated at the top of the heap, and the next batch faulted
# it in again; instead the engine trims where it decides (release_free_memory). mallopt takes an int: 2 GiB - 1.
TRIM_THRESHOLD = 2**31 - 1

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


_kept = False


def keep_freed_pages() -> bool:
    """Have glibc's malloc keep the pages a batch frees for the next batch, until the engine trims
    (release_free_memory). glibc gives every block of 128 KiB or more (up to 32 MiB, as it adapts) a mapping of its
    own, unmapped when freed, and hands the free top of its heap back past TRIM_THRESHOLD's default: each batch of
    an inference pass or micro-batch of a step then faulted its activations' pages in anew, zeroed by the kernel.
    This takes every block from the heap (M_MMAP_MAX 0) and leaves the top to the trims (TRIM_THRESHOLD). The first
    CPU training run, inference pass or generation calls it, and it holds for the rest of the process. True once
    set; False where the C library is not glibc or KEEP_FREED_PAGES is off."""
    global _kept
    if _kept or not KEEP_FREED_PAGES or _malloc_trim() is None:
        return _kept
    mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    _kept = bool(mallopt(M_MMAP_MAX, 0)) & bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _kept


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
