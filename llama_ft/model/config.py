"""LlamaConfig: the Hugging Face `config.json` of a Llama-family decoder, read and written back."""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_ft.files import write_atomic
from llama_ft.sources.hub_ids import PRESET_HUB_IDS
from llama_ft.sources.hub_ids import hub_id_for as hub_id_for  # re-exported: cli/run_folder names it here
from llama_ft.sources.resolve import resolve_config


class ConfigError(ValueError):
    """A config.json that cannot describe a Llama model; the message names the file, the field and the fix."""


# Fields config.json files carry that are bookkeeping, not architecture: kept verbatim, never warned about.
_PASSTHROUGH = {
    "_name_or_path", "architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
    "use_cache", "pretraining_tp", "attention_dropout", "hidden_act", "initializer_range",
    "id2label", "label2id", "problem_type", "num_labels", "pad_token_id_source",
    "qa_format",
}

_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
ROPE_TYPES = ("default", "linear", "llama3")


# ------------------------------------------------------------------ what each field may hold
def _is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_number(v: Any, positive: bool = True) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and (v > 0 if positive else v >= 0))


def _is_token_id(v: Any, cfg: LlamaConfig) -> bool:
    return _is_int(v, 0, cfg.vocab_size - 1)


_SIZE = "a positive integer"
_ID = "null or a token id from 0 to `vocab_size` - 1"
_REDOWNLOAD = "copy the value from the model's published config.json"
_ID_FIX = "ids index the embedding: remove the field, or use the id the tokenizer gives that token"
# field: (what it must hold, the test, how to fix it). One table for the dataclass fields and for the bookkeeping
# fields llama_ft reads; ranges bound the sizes far above any published Llama, so a typo cannot ask for
# petabytes. Id fields are checked after `vocab_size`, which precedes them.
_RULES: dict[str, tuple[str, Callable[[Any, LlamaConfig], bool], str]] = {
    "hidden_size": (f"{_SIZE} up to 2**20", lambda v, c: _is_int(v, 1, 2**20), _REDOWNLOAD),
    "intermediate_size": (f"{_SIZE} up to 2**22", lambda v, c: _is_int(v, 1, 2**22), _REDOWNLOAD),
    "num_hidden_layers": (f"{_SIZE} up to 1024", lambda v, c: _is_int(v, 1, 1024), _REDOWNLOAD),
    "num_attention_heads": (f"{_SIZE} up to 2**14", lambda v, c: _is_int(v, 1, 2**14), _REDOWNLOAD),
    "num_key_value_heads": (f"null or {_SIZE} up to 2**14", lambda v, c: v is None or _is_int(v, 1, 2**14),
                            _REDOWNLOAD),
    "head_dim": (f"null or {_SIZE} up to 2**14", lambda v, c: v is None or _is_int(v, 1, 2**14), _REDOWNLOAD),
    "vocab_size": (f"{_SIZE} up to 2**24", lambda v, c: _is_int(v, 1, 2**24), _REDOWNLOAD),
    "max_position_embeddings": (f"{_SIZE} up to 2**31", lambda v, c: _is_int(v, 1, 2**31), _REDOWNLOAD),
    "rms_norm_eps": ("a positive finite number", lambda v, c: _is_number(v), _REDOWNLOAD),
    "rope_theta": ("a positive finite number", lambda v, c: _is_number(v), _REDOWNLOAD),
    "initializer_range": ("a finite number >= 0", lambda v, c: _is_number(v, positive=False), "use 0.02"),
    "tie_word_embeddings": ("true or false", lambda v, c: isinstance(v, bool), _REDOWNLOAD),
    "attention_bias": ("true or false", lambda v, c: isinstance(v, bool), _REDOWNLOAD),
    "mlp_bias": ("true or false", lambda v, c: isinstance(v, bool), _REDOWNLOAD),
    "bos_token_id": (_ID, lambda v, c: v is None or _is_token_id(v, c), _ID_FIX),
    "eos_token_id": (f"{_ID}, or a list of such ids",
                     lambda v, c: v is None or _is_token_id(v, c)
                     or (isinstance(v, list) and all(_is_token_id(i, c) for i in v)), _ID_FIX),
    "pad_token_id": (_ID, lambda v, c: v is None or _is_token_id(v, c), _ID_FIX),
    "rope_scaling": ("null or an object", lambda v, c: v is None or isinstance(v, dict),
                     "remove it for plain rotary embeddings"),
    # Bookkeeping fields (kept in `extra`) that loading and exports read.
    "architectures": ("a list of class names", lambda v, c: isinstance(v, list)
                      and all(isinstance(a, str) for a in v), 'e.g. ["LlamaForCausalLM"]'),
    "num_labels": (f"{_SIZE} up to 2**20", lambda v, c: _is_int(v, 1, 2**20), "use the number of classes"),
    "id2label": ("an object (id -> label name)", lambda v, c: isinstance(v, (dict, list)),
                 'e.g. {"0": "negative", "1": "positive"}'),
    "label2id": ("an object (label name -> id)", lambda v, c: isinstance(v, dict),
                 'e.g. {"negative": 0, "positive": 1}'),
    "model_type": ("a string", lambda v, c: v is None or isinstance(v, str), 'use "llama"'),
}
# rope_scaling keys: (what they must hold, the test).
_ROPE_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "factor": ("a positive finite number", _is_number),
    "low_freq_factor": ("a positive finite number", _is_number),
    "high_freq_factor": ("a positive finite number", _is_number),
    "original_max_position_embeddings": (f"{_SIZE} up to 2**31", lambda v: _is_int(v, 1, 2**31)),
}
_ABSENT = object()


def _found(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
    text = text if len(text) <= 60 else text[:60] + "..."
    return f"{text} (a JSON {_JSON_TYPES.get(type(v), type(v).__name__)})"


_JSON_TYPES = {str: "string", int: "number", float: "number", bool: "boolean", type(None): "null", list: "list",
               dict: "object"}


def _unquote_hint(v: Any, ok: Callable[[Any], bool]) -> str | None:
    """How to fix a value written as a string that would be right without its quotes ("1e-5", "false")."""
    if not isinstance(v, str):
        return None
    try:
        unquoted = json.loads(v.strip().lower() if v.strip().lower() in ("true", "false", "null") else v)
    except (ValueError, RecursionError):
        return None
    return f"write it without the quotes: {json.dumps(unquoted)}" if ok(unquoted) else None


@dataclass
class LlamaConfig:
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_hidden_layers: int = 30
    num_attention_heads: int = 9
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    vocab_size: int = 49152
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    # Everything else found in config.json, written back unchanged.
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    source: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._check_fields()  # types first: the defaults below compute with them
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"{self._where()}: `hidden_size` {self.hidden_size} is not divisible by "
                    f"`num_attention_heads` {self.num_attention_heads}; set `head_dim` explicitly or fix "
                    "the head count.")
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate()

    # ------------------------------------------------------------------ checks
    def _where(self) -> str:
        return self.source or "config"

    def _check_fields(self) -> None:
        """Every field of `_RULES` that is set holds what it must; else a ConfigError naming it."""
        where = self._where()
        for name, (must, ok, fix) in _RULES.items():
            v = getattr(self, name) if name in _FIELDS else self.extra.get(name, _ABSENT)
            if v is _ABSENT or ok(v, self):
                continue
            hint = _unquote_hint(v, lambda u, ok=ok: ok(u, self)) or fix
            raise ConfigError(f"{where}: `{name}` must be {must}, found {_found(v)}; {hint}.")

    def validate(self) -> None:
        """Raise a ConfigError naming the field when this config cannot describe a Llama model."""
        self._check_fields()
        where = self._where()
        for name in ("num_key_value_heads", "head_dim"):
            if getattr(self, name) is None:
                raise ConfigError(f"{where}: `{name}` must be {_SIZE}, found null.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"{where}: `num_key_value_heads` {self.num_key_value_heads} does not divide "
                f"`num_attention_heads` {self.num_attention_heads}; grouped-query attention needs "
                "num_attention_heads to be a multiple of num_key_value_heads.")
        if self.head_dim % 2:
            raise ConfigError(f"{where}: `head_dim` {self.head_dim} must be even for rotary embeddings.")
        rs = self.rope_scaling
        if rs is not None:
            kind = rs.get("rope_type", rs.get("type", "default"))
            if not isinstance(kind, str) or kind not in ROPE_TYPES:
                raise ConfigError(
                    f"{where}: `rope_scaling.rope_type` {kind!r} is not supported; llama_ft implements "
                    f"{', '.join(ROPE_TYPES)}. Remove `rope_scaling` or use one of those.")
            needed = {"linear": ("factor",),
                      "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                 "original_max_position_embeddings")}.get(kind, ())
            for key in needed:
                if key not in rs:
                    raise ConfigError(f"{where}: `rope_scaling` of type {kind!r} needs `{key}`.")
                must, ok = _ROPE_RULES[key]
                if not ok(rs[key]):
                    hint = _unquote_hint(rs[key], ok) or _REDOWNLOAD
                    raise ConfigError(f"{where}: `rope_scaling.{key}` must be {must}, found {_found(rs[key])}; "
                                      f"{hint}.")
            if kind == "llama3" and rs["high_freq_factor"] <= rs["low_freq_factor"]:
                raise ConfigError(f"{where}: `rope_scaling.high_freq_factor` must exceed `low_freq_factor`.")

    @property
    def rope_type(self) -> str:
        rs = self.rope_scaling or {}
        return rs.get("rope_type", rs.get("type", "default"))

    @property
    def eos_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else list(e) if isinstance(e, (list, tuple)) else [e]

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> LlamaConfig:
        """Build from a parsed config.json; unknown fields are kept (and warned about)."""
        where = source or "config"
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: a config.json must hold one JSON object of fields, found "
                              f"{_found(d)}; restore the model's config.json.")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ConfigError(f"{where}: missing required field(s) {', '.join(f'`{m}`' for m in missing)}; "
                              "a Llama config.json must define them.")
        mt = d.get("model_type")
        if mt not in (None, "llama"):
            warnings.warn(f"{where}: model_type is {mt!r}, not 'llama'; loading it as a Llama decoder.",
                          stacklevel=2)
        if "rope_parameters" in d and not isinstance(d["rope_parameters"], dict):
            raise ConfigError(f"{where}: `rope_parameters` must be an object, found {_found(d['rope_parameters'])}; "
                              "remove it or copy it from the model's published config.json.")
        if isinstance(d.get("rope_parameters"), dict):
            # transformers >= 5 writes rope_theta and the scaling together as `rope_parameters`.
            d = dict(d)
            rp = dict(d.pop("rope_parameters"))
            d.setdefault("rope_theta", rp.pop("rope_theta", cls.rope_theta))
            if rp.get("rope_type", rp.get("type", "default")) != "default":
                d.setdefault("rope_scaling", rp)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "source"}
        kwargs = {k: d[k] for k in known if k in d}
        extra = {k: v for k, v in d.items() if k not in known}
        unknown = sorted(k for k in extra if k not in _PASSTHROUGH)
        if unknown:
            warnings.warn(f"{where}: ignoring unknown field(s) {', '.join(unknown)} (kept when saving).",
                          stacklevel=2)
        return cls(**kwargs, extra=extra, source=source)

    def to_dict(self) -> dict:
        """The config.json dictionary (Hugging Face field names), extras included."""
        d = dict(self.extra)
        d.setdefault("model_type", "llama")
        d.setdefault("architectures", ["LlamaForCausalLM"])
        d.setdefault("hidden_act", "silu")
        for f in dataclasses.fields(self):
            if f.name in ("extra", "source"):
                continue
            d[f.name] = getattr(self, f.name)
        return dict(sorted(d.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json into `directory`; returns its path."""
        path = Path(directory) / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, self.to_json_string())

    @classmethod
    def from_json_file(cls, path: str | Path) -> LlamaConfig:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file.") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e}).") from None
        return cls.from_dict(d, source=str(path))

    @classmethod
    def from_pretrained(cls, src: str | Path, **hub_kwargs) -> LlamaConfig:
        """A config from a preset name, a config.json, a model folder, a .gguf file or a Hub id."""
        if isinstance(src, str) and src.lower() in PRESETS:
            return cls.from_dict(dict(PRESETS[src.lower()]), source=f"preset {src.lower()!r}")
        p = Path(src)
        if p.suffix == ".json":
            return cls.from_json_file(p)
        if p.is_dir() and (p / "config.json").is_file():
            return cls.from_json_file(p / "config.json")
        return cls.from_json_file(resolve_config(str(src), **hub_kwargs))


_FIELDS = {f.name for f in dataclasses.fields(LlamaConfig)}

# Named presets: the config.json values of the published models (Hugging Face field names).
PRESETS: dict[str, dict] = {
    "llama-3.2-1b": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
        max_position_embeddings=131072, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        bos_token_id=128000, eos_token_id=128001, _name_or_path=PRESET_HUB_IDS["llama-3.2-1b"]),
    "llama-3.2-3b": dict(
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
        max_position_embeddings=131072, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        bos_token_id=128000, eos_token_id=128001, _name_or_path=PRESET_HUB_IDS["llama-3.2-3b"]),
    # The published 3.1-8B config.json has no head_dim: hidden_size / num_attention_heads (128) applies.
    "llama-3.1-8b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
        max_position_embeddings=131072, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        bos_token_id=128000, eos_token_id=128001, _name_or_path=PRESET_HUB_IDS["llama-3.1-8b"]),
    "smollm2-135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, vocab_size=49152, rms_norm_eps=1e-5, rope_theta=100000.0,
        rope_scaling=None, max_position_embeddings=8192, tie_word_embeddings=True, attention_bias=False,
        mlp_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        _name_or_path=PRESET_HUB_IDS["smollm2-135m"]),
}

