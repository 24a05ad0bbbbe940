"""What this CPU computes in hardware, as the dtype and compile rules need it: bf16 dot products and AMX tiles.

Without bf16 dot-product instructions (AVX512-BF16 or AMX-BF16: most laptops, AMD before Zen 4, most Intel CPUs before
Sapphire Rapids), PyTorch runs a bf16 matmul through a slow generic path, several times slower than the same matmul in
fp32 (BENCHMARKS.md, session 19), so bf16 autocast there costs speed instead of buying it.
"""
from __future__ import annotations

from pathlib import Path

import torch

BF16_DOT_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flag(name: str) -> bool:
    """Whether this CPU has the feature `name` (as torch.cpu.get_capabilities and /proc/cpuinfo spell it): torch's
    table, or /proc/cpuinfo's flags under a torch that predates it (setup.cfg allows torch 2.5)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        return bool(capabilities().get(name, False))
    try:
        return name in Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: no flags to read, and callers take the cautious answer
        return False


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 matrix units."""
    return cpu_flag("amx_bf16")


def cpu_has_bf16_dot() -> bool:
    """Whether this CPU computes bf16 dot products in hardware (AVX512-BF16 or AMX-BF16), so that bf16 autocast
    makes its matmuls faster than fp32 rather than slower."""
    return any(cpu_flag(name) for name in BF16_DOT_FLAGS)
