"""`from_pretrained`: any model source to a ready task model, built on the meta device and loaded in place."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from llama_ft.dtypes import as_dtype as as_dtype  # re-exported: the recipes name it here
from llama_ft.files import restore_moved_aside
from llama_ft.hf.weights import load_weights, materialise
from llama_ft.model.config import ConfigError, LlamaConfig
from llama_ft.model.llama import TASKS, LlamaPreTrainedModel
from llama_ft.sources.resolve import CONFIG_FILES, resolve, resolve_tokenizer
from llama_ft.tokenizer import (
    LLAMA3_PAD_TOKEN,
    Tokenizer,
    TokenizerError,
    _token_text,
    choose_pad,
    llama3_tokenizer_from_tiktoken,
    tokenizer_from_file,
    tokenizer_from_folder,
)


def build_model(cfg: LlamaConfig, task: str = "causal-lm", num_labels: int = 2,
                device: str | torch.device = "meta") -> LlamaPreTrainedModel:
    """An untrained task model for `cfg`; on the meta device it costs no memory (for audits and loading)."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}.")
    cls = TASKS[task]
    with torch.device(device):
        return cls(cfg, num_labels=num_labels) if task == "classification" else cls(cfg)


def _saved_task(folder: Path) -> tuple[str | None, int | None]:
    """The task and label count an exported folder was saved for (from config.json `architectures`)."""
    try:
        d = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None, None
    arch = (d.get("architectures") or [None])[0]
    for task, cls in TASKS.items():
        if cls.architecture == arch:
            n = len(d["id2label"]) if isinstance(d.get("id2label"), dict) else d.get("num_labels")
            return task, n
    return None, None


def _json_or_empty(path: Path) -> dict:
    """A tokenizer file's JSON object, or {} when it is absent or unreadable: the model loads, and the tokenizer,
    when it is built, names the file and the problem."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return d if isinstance(d, dict) else {}


def _token_ids(folder: Path) -> dict[str, int]:
    """{token: id} from the folder's tokenizer files: tokenizer.json's vocabulary and added tokens, and
    tokenizer_config.json's `added_tokens_decoder` (what the tokenizer's `token_to_id` would answer)."""
    tj, tc = _json_or_empty(folder / "tokenizer.json"), _json_or_empty(folder / "tokenizer_config.json")
    vocab = (tj.get("model") or {}).get("vocab") if isinstance(tj.get("model"), dict) else None
    ids = {k: v for k, v in vocab.items() if isinstance(v, int)} if isinstance(vocab, dict) else {}
    added = list(tj.get("added_tokens") or []) if isinstance(tj.get("added_tokens"), list) else []
    decoder = tc.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        added += [dict(v, id=k) for k, v in decoder.items() if isinstance(v, dict)]
    for tok in added:
        if isinstance(tok, dict) and isinstance(tok.get("content"), str) and str(tok.get("id")).isdigit():
            ids[tok["content"]] = int(tok["id"])
    return ids


def _named_pad_token(folder: Path) -> str | None:
    """The `pad_token` the tokenizer reads: tokenizer_config.json's, else special_tokens_map.json's."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        pad = _token_text(_json_or_empty(folder / name).get("pad_token"))
        if pad is not None:
            return pad
    return None


def default_pad_token(folder: Path, cfg: LlamaConfig) -> tuple[int | None, str]:
    """(pad id, where it came from) for a config without `pad_token_id`: the tokenizer's choice
    (`llama_ft.tokenizer.choose_pad`: Llama 3's reserved pad token, else tokenizer_config.json's `pad_token`,
    else EOS), made from the folder's files without building the tokenizer, so that the model and its tokenizer
    pad alike and an export of the two agrees."""
    ids = _token_ids(folder)
    named = _named_pad_token(folder)
    return choose_pad(ids.get(LLAMA3_PAD_TOKEN), ids.get(named) if named else None,
                      cfg.eos_ids[0] if cfg.eos_ids else None)


def _refuse_config_file(path: Path) -> None:
    if path.name in CONFIG_FILES and path.is_file():
        raise ConfigError(f"{path}: a model's {path.name}, given where a model is expected; pass the folder that "
                          f"holds it ({path.parent}), a .gguf file, a preset name or a Hub id.")


def from_pretrained(src: str | Path, task: str | None = None, num_labels: int | None = None,
                    dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu",
                    revision: str | None = None, token: str | None = None, strict: bool = True,
                    seed: int | None = None) -> LlamaPreTrainedModel:
    """A model with weights from `src` (folder, .gguf, preset/embedded name or Hub id) for `task`.

    Task heads missing from the checkpoint (a base model under a classification or QA head) are
    initialised as transformers does, from `seed` when given.
    """
    folder = Path(src)
    _refuse_config_file(folder)
    restore_moved_aside(folder)  # an export killed between its two renames left the previous one aside
    if not folder.is_dir():
        folder = Path(resolve(src, revision=revision, token=token))
    cfg = LlamaConfig.from_json_file(folder / "config.json")
    saved_task, saved_labels = _saved_task(folder)
    task = task or saved_task or "causal-lm"
    if num_labels is None:
        num_labels = saved_labels if (saved_task == task and saved_labels) else 2
    if cfg.pad_token_id is None:
        # Llama 3 has no pad token; the tokenizer's choice is recorded so pooling and exports agree.
        cfg.pad_token_id, cfg.extra["pad_token_id_source"] = default_pad_token(folder, cfg)
    model = build_model(cfg, task, num_labels)
    if seed is not None:
        torch.manual_seed(seed)
    load_weights(model, folder, dtype=as_dtype(dtype), device=device, strict=strict)
    model.source = str(src)
    model.eval()
    return model


def random_model(cfg: LlamaConfig, task: str = "causal-lm", num_labels: int = 2,
                 dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu",
                 seed: int = 0) -> LlamaPreTrainedModel:
    """A randomly initialised model of `cfg`'s shape (benchmarks, tests), built without an fp32 detour."""
    model = build_model(cfg, task, num_labels)
    torch.manual_seed(seed)
    materialise(model, as_dtype(dtype), device)
    return model


def _tiktoken_folder(folder: Path) -> tuple[Path, Path] | None:
    """(tokenizer.model, tokenizer_config.json) when `folder` or its parent holds a tiktoken model."""
    for model in (folder / "tokenizer.model", folder.parent / "tokenizer.model"):
        if model.is_file():
            for cfg in (folder / "tokenizer_config.json", model.parent / "tokenizer_config.json"):
                if cfg.is_file():
                    return model, cfg
    return None


def load_tokenizer(src: str | Path | Tokenizer, *, revision: str | None = None, token: str | None = None,
                   cache_dir: str | Path | None = None,
                   tokenizer_config: str | Path | None = None) -> Tokenizer:
    """The tokenizer of a folder (tokenizer.json, or Meta's tokenizer.model + tokenizer_config.json), a
    tokenizer.json/tokenizer.model file, a .gguf file, a preset name or a Hub id."""
    if isinstance(src, Tokenizer):
        return src
    path = Path(src).expanduser()
    _refuse_config_file(path)
    if (path.is_file() and path.name == "tokenizer.model") or tokenizer_config is not None:
        model = path if path.is_file() else path / "tokenizer.model"
        cfg = Path(tokenizer_config) if tokenizer_config is not None else model.parent / "tokenizer_config.json"
        return llama3_tokenizer_from_tiktoken(model, cfg)
    if path.is_file() and path.suffix == ".json":
        return tokenizer_from_file(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return tokenizer_from_folder(path)
        found = _tiktoken_folder(path)
        if found:
            return llama3_tokenizer_from_tiktoken(*found)
        raise TokenizerError(f"{path}: no tokenizer.json and no tiktoken tokenizer.model with a "
                             "tokenizer_config.json; add the model's tokenizer.json.")
    return tokenizer_from_folder(resolve_tokenizer(src, revision=revision, token=token, cache_dir=cache_dir))
