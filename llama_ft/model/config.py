"""LlamaConfig: the Hugging Face `config.json` of a Llama-family decoder, read and written back."""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_ft.sources.resolve import resolve_config


class ConfigError(ValueError):
    """A config.json that cannot describe a Llama model; the message names the file, the field and the fix."""


# Fields config.json files carry that are bookkeeping, not architecture: kept verbatim, never warned about.
_PASSTHROUGH = {
    "_name_or_path", "architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
    "use_cache", "pretraining_tp", "attention_dropout", "hidden_act", "initializer_range",
    "id2label", "label2id", "problem_type", "num_labels", "pad_token_id_source",
}

_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
ROPE_TYPES = ("default", "linear", "llama3")


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
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and isinstance(self.num_attention_heads, int) and self.num_attention_heads > 0:
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

    def validate(self) -> None:
        where = self._where()
        for name in _REQUIRED + ("num_key_value_heads", "head_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{where}: `{name}` must be a positive integer, got {v!r}.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"{where}: `num_key_value_heads` {self.num_key_value_heads} does not divide "
                f"`num_attention_heads` {self.num_attention_heads}; grouped-query attention needs "
                "num_attention_heads to be a multiple of num_key_value_heads.")
        if self.head_dim % 2:
            raise ConfigError(f"{where}: `head_dim` {self.head_dim} must be even for rotary embeddings.")
        rs = self.rope_scaling
        if rs is not None:
            if not isinstance(rs, dict):
                raise ConfigError(f"{where}: `rope_scaling` must be an object or null, got {rs!r}.")
            kind = rs.get("rope_type", rs.get("type", "default"))
            if kind not in ROPE_TYPES:
                raise ConfigError(
                    f"{where}: `rope_scaling.rope_type` {kind!r} is not supported; llama_ft implements "
                    f"{', '.join(ROPE_TYPES)}. Remove `rope_scaling` or use one of those.")
            needed = {"linear": ("factor",),
                      "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                 "original_max_position_embeddings")}.get(kind, ())
            for key in needed:
                if key not in rs:
                    raise ConfigError(f"{where}: `rope_scaling` of type {kind!r} needs `{key}`.")
            if kind == "llama3" and rs["high_freq_factor"] <= rs["low_freq_factor"]:
                raise ConfigError(f"{where}: `rope_scaling.high_freq_factor` must exceed `low_freq_factor`.")
        if not (self.rms_norm_eps > 0 and math.isfinite(self.rms_norm_eps)):
            raise ConfigError(f"{where}: `rms_norm_eps` must be a positive number, got {self.rms_norm_eps!r}.")

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
            raise ConfigError(f"{where}: expected a JSON object, got {type(d).__name__}.")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ConfigError(f"{where}: missing required field(s) {', '.join(f'`{m}`' for m in missing)}; "
                              "a Llama config.json must define them.")
        mt = d.get("model_type")
        if mt not in (None, "llama"):
            warnings.warn(f"{where}: model_type is {mt!r}, not 'llama'; loading it as a Llama decoder.",
                          stacklevel=2)
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
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json_string())
        tmp.replace(path)
        return path

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


# Named presets: the config.json values of the published models (Hugging Face field names).
PRESETS: dict[str, dict] = {
    "llama-3.2-1b": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
        max_position_embeddings=131072, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        bos_token_id=128000, eos_token_id=128001, _name_or_path="meta-llama/Llama-3.2-1B"),
    "llama-3.2-3b": dict(
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
        max_position_embeddings=131072, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        bos_token_id=128000, eos_token_id=128001, _name_or_path="meta-llama/Llama-3.2-3B"),
    # The published 3.1-8B config.json has no head_dim: hidden_size / num_attention_heads (128) applies.
    "llama-3.1-8b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
        max_position_embeddings=131072, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        bos_token_id=128000, eos_token_id=128001, _name_or_path="meta-llama/Llama-3.1-8B"),
    "smollm2-135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, vocab_size=49152, rms_norm_eps=1e-5, rope_theta=100000.0,
        rope_scaling=None, max_position_embeddings=8192, tie_word_embeddings=True, attention_bias=False,
        mlp_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        _name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct"),
}


def hub_id_for(src: str) -> str | None:
    """The Hugging Face Hub id a model source stands for (preset names map to their models), if any."""
    s = str(src)
    if s.lower() in PRESETS:
        return PRESETS[s.lower()].get("_name_or_path")
    parts = s.split("/")
    if len(parts) == 2 and all(parts) and not Path(s).exists() and not s.endswith(".gguf"):
        return s
    return None
