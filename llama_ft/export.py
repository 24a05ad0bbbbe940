"""Save a task model as a Hugging Face folder that `transformers` loads unchanged."""
from __future__ import annotations

from pathlib import Path

import torch

from .loading import as_dtype
from .weights import save_weights, state_dict_for_saving


def save_pretrained(model, directory: str | Path, dtype: torch.dtype | str = torch.bfloat16,
                    max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write config.json (with `architectures`) and safetensors weights in `dtype`; returns the folder."""
    directory = Path(directory)
    cfg = model.config
    d = cfg.to_dict()
    d["architectures"] = [model.architecture]
    d["torch_dtype"] = str(as_dtype(dtype)).removeprefix("torch.")
    if model.task == "classification":
        n = model.num_labels
        labels = getattr(model, "id2label", None) or {i: f"LABEL_{i}" for i in range(n)}
        d["id2label"] = {str(i): labels[i] for i in range(n)}
        d["label2id"] = {labels[i]: i for i in range(n)}
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(state_dict_for_saving(model, as_dtype(dtype)), directory, max_shard_bytes)
    import json
    (directory / "config.json").write_text(json.dumps(dict(sorted(d.items())), indent=2) + "\n")
    return directory
