"""Hugging Face Hub ids: which strings are `owner/name` repo ids, and the Hub model each preset name stands for."""
from __future__ import annotations

import re
from pathlib import Path

# Preset names and the published models they stand for (smollm2-135m loads from the embedded GGUF of that model).
PRESET_HUB_IDS = {"llama-3.2-1b": "meta-llama/Llama-3.2-1B",
                  "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
                  "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
                  "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# The Hub's rule: letters, digits, '-', '_', '.'; no leading/trailing '-' or '.', no '--' or '..'.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^{_PART}/{_PART}$")
MAX_NAME = 96
# Suffixes of model files: `folder/config.json` is a mistyped local path, not a repo.
_FILE_SUFFIXES = (".gguf", ".json", ".safetensors", ".bin", ".pth")


def is_repo_id(s: object) -> bool:
    """True when `s` is a valid `owner/name` Hub repo id (syntax alone; nothing is looked up)."""
    return (isinstance(s, str) and bool(_REPO_ID.match(s)) and "--" not in s and ".." not in s
            and len(s.split("/")[1]) <= MAX_NAME)


def looks_like_hub_id(s: object) -> bool:
    """True when `s` reads as a Hub id and nothing else: a repo id that names no local path or model file."""
    return is_repo_id(s) and not s.lower().endswith(_FILE_SUFFIXES) and not Path(s).expanduser().exists()


def hub_id_for(src: str | Path) -> str | None:
    """The Hub id a model source stands for (preset names map to their models), if any."""
    s = str(src)
    return PRESET_HUB_IDS.get(s.lower()) or (s if looks_like_hub_id(s) else None)
