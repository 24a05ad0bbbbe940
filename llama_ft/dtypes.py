"""Dtype names: the one table from the names a user, a config.json or a safetensors header gives a dtype to torch's."""
from __future__ import annotations

import torch

# torch dtype, its safetensors header code, the names users and config.json files write for it.
_TABLE = (
    (torch.float32, "F32", ("float32", "fp32")),
    (torch.bfloat16, "BF16", ("bfloat16", "bf16")),
    (torch.float16, "F16", ("float16", "fp16")),
    (torch.float64, "F64", ("float64",)),
    (torch.int64, "I64", ("int64",)),
    (torch.int32, "I32", ("int32",)),
    (torch.int16, "I16", ("int16",)),
    (torch.int8, "I8", ("int8",)),
    (torch.uint8, "U8", ("uint8",)),
    (torch.bool, "BOOL", ("bool",)),
    (torch.float8_e4m3fn, "F8_E4M3", ("float8_e4m3fn",)),
    (torch.float8_e5m2, "F8_E5M2", ("float8_e5m2",)),
)
DTYPES: dict[str, torch.dtype] = {name: dt for dt, _, names in _TABLE for name in names}
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {code: dt for dt, code, _ in _TABLE}
# The dtypes a model's weights may be held in.
MODEL_DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


def as_dtype(dtype: torch.dtype | str, allowed: tuple[str, ...] = MODEL_DTYPES) -> torch.dtype:
    """The torch dtype named `dtype` (a torch.dtype passes through); a ValueError for a name not in `allowed`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in allowed:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(allowed)}.")
    return DTYPES[dtype]
