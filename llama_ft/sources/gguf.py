"""GGUF (llama.cpp) -> Hugging Face folder: dequantized safetensors, config.json, tokenizer.json."""
from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import save_file

from llama_ft.dtypes import DTYPES
from llama_ft.tokenizer import byte_level_bpe_json, byte_level_post_processor, byte_level_pre_tokenizer

if TYPE_CHECKING:
    import gguf as _gguf  # the `gguf` package from PyPI, not this module

# Bump when the converted folder's contents change, so cached conversions are redone.
FORMAT_VERSION = 1

# llama.cpp `tokenizer.ggml.pre` values -> (our byte-level pre-tokenizer family, BPE ignore_merges).
_PRE_TOKENIZERS = {
    "default": ("gpt2", False), "gpt-2": ("gpt2", False), "gpt2": ("gpt2", False),
    "llama-bpe": ("llama3", True), "llama3": ("llama3", True), "llama-v3": ("llama3", True),
    "smollm": ("smollm", False), "starcoder": ("smollm", False), "refact": ("smollm", False),
}

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_RE = re.compile(r"blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4


class GGUFError(ValueError):
    """A GGUF file llama_ft cannot convert; the message names the file, the field and the fix."""


# ------------------------------------------------------------------ q/k row order
def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Hugging Face q/k projection rows -> llama.cpp's interleaved rotary order (what convert_hf_to_gguf does)."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, 2, head_dim // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's interleaved q/k rows -> Hugging Face's half-split rotary order (inverse of `permute_qk`)."""
    # Within each head llama.cpp stores rotary pairs as rows (2i, 2i+1); Hugging Face as rows (i, i + d/2).
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, head_dim // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


# ------------------------------------------------------------------ reading
def _gguf_package():
    """The `gguf` package from PyPI, imported on first use: only GGUF sources need it, so `import llama_ft`
    (and a device image without the package) does not."""
    import gguf
    return gguf


def open_gguf(path: str | Path) -> _gguf.GGUFReader:
    """A GGUFReader over `path`, with errors that say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such GGUF file.")
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GGUFError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF'); pass a llama.cpp "
                        ".gguf model.")
    try:
        reader = _gguf_package().GGUFReader(path)
    except Exception as e:  # noqa: BLE001 -- a damaged file fails inside gguf in many different ways
        raise GGUFError(f"{path}: cannot be parsed ({type(e).__name__}: {e}); the file is truncated or corrupt "
                        f"({size} bytes on disk); download it again.") from None
    for t in reader.tensors:
        if int(t.data_offset) + int(t.n_bytes) > size:
            raise GGUFError(f"{path}: tensor {t.name} ends at byte {int(t.data_offset) + int(t.n_bytes)} but the "
                            f"file has {size} bytes; the file is truncated; download it again.")
    return reader


def _field(reader: _gguf.GGUFReader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _f32(x: float) -> float:
    """The shortest decimal that reads back as the same float32 (GGUF stores 1e-5 as 9.99999974738e-06)."""
    return float(str(np.float32(x)))


def _required(reader: _gguf.GGUFReader, path: Path, key: str) -> Any:
    v = _field(reader, key)
    if v is None:
        raise GGUFError(f"{path}: metadata has no `{key}`; the file was not written by a llama.cpp converter "
                        "for Llama models; re-convert it with llama.cpp's convert_hf_to_gguf.py.")
    return v


def _check_architecture(reader: _gguf.GGUFReader, path: Path) -> None:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise GGUFError(f"{path}: `general.architecture` is {arch!r}; llama_ft converts Llama-architecture GGUF "
                        "files only ('llama'); use a Llama-family model.")


def _llama3_rope_scaling(factors: np.ndarray, theta: float, head_dim: int, original: int, path: Path) -> dict:
    """Recover Llama 3.1-style `rope_scaling` from llama.cpp's precomputed `rope_freqs.weight`."""
    f = factors.astype(np.float64)
    factor = float(f.max())
    wavelen = 2 * math.pi * theta ** (np.arange(0, head_dim, 2) / head_dim)
    mid = (f > 1 + 1e-6) & (f < factor * (1 - 1e-6))
    low, high = 1.0, 4.0  # Meta's defaults, when too few frequencies lie in the smoothing band to fit them
    if mid.sum() >= 2:
        # Between the bands 1/f = (1 - s)/factor + s, with s linear in original/wavelen.
        smooth = (1 / f[mid] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(original / wavelen[mid], smooth, 1)
        low = round(float(-intercept / slope), 4)
        high = round(low + float(1 / slope), 4)
    scaling = {"rope_type": "llama3", "factor": round(factor, 4), "low_freq_factor": low,
               "high_freq_factor": high, "original_max_position_embeddings": original}
    low_wl, high_wl = original / low, original / high
    s = np.clip((original / wavelen - low) / (high - low), 0, 1)
    expect = np.where(wavelen < high_wl, 1.0, np.where(wavelen > low_wl, factor, 1 / ((1 - s) / factor + s)))
    if not np.allclose(expect, f, rtol=1e-4, atol=1e-5):
        raise GGUFError(f"{path}: `rope_freqs.weight` does not follow Llama 3 rope scaling; llama_ft cannot "
                        "express it in config.json; use the Hugging Face checkpoint of this model.")
    return scaling


def gguf_config(reader: _gguf.GGUFReader, path: str | Path) -> dict:
    """The config.json dictionary (Hugging Face field names) rebuilt from a Llama GGUF's metadata."""
    path = Path(path)
    _check_architecture(reader, path)
    tensors = {t.name: t for t in reader.tensors}
    hidden = int(_required(reader, path, "llama.embedding_length"))
    heads = int(_required(reader, path, "llama.attention.head_count"))
    kv_heads = int(_field(reader, "llama.attention.head_count_kv", heads))
    head_dim = int(_field(reader, "llama.attention.key_length", 0)
                   or _field(reader, "llama.rope.dimension_count", 0) or hidden // heads)
    if "token_embd.weight" not in tensors:
        raise GGUFError(f"{path}: no `token_embd.weight` tensor; the file is incomplete; download it again.")
    n_embed_rows = int(tensors["token_embd.weight"].shape[1])
    tokens = _field(reader, "tokenizer.ggml.tokens")
    vocab = int(_field(reader, "llama.vocab_size", 0) or n_embed_rows)
    theta = _f32(_field(reader, "llama.rope.freq_base", 10000.0))
    context = int(_field(reader, "llama.context_length", 2048))
    if tokens is not None and len(tokens) > n_embed_rows:
        raise GGUFError(f"{path}: `tokenizer.ggml.tokens` has {len(tokens)} tokens but `token_embd.weight` has "
                        f"{n_embed_rows} rows; the tokenizer does not fit the embedding; the file is "
                        "inconsistent; use a correctly converted GGUF.")
    if vocab != n_embed_rows:
        raise GGUFError(f"{path}: `llama.vocab_size` is {vocab} but `token_embd.weight` has {n_embed_rows} rows; "
                        "the file is inconsistent; use a correctly converted GGUF.")

    rope_scaling = None
    kind = _field(reader, "llama.rope.scaling.type")
    original = int(_field(reader, "llama.rope.scaling.original_context_length", 0) or 8192)
    if "rope_freqs.weight" in tensors:
        freqs = tensors["rope_freqs.weight"]
        factors = _gguf_package().quants.dequantize(freqs.data, freqs.tensor_type)
        rope_scaling = _llama3_rope_scaling(np.asarray(factors).reshape(-1), theta, head_dim, original, path)
    elif kind == "linear":
        rope_scaling = {"rope_type": "linear", "factor": _f32(_required(reader, path, "llama.rope.scaling.factor"))}
    elif kind not in (None, "none"):
        raise GGUFError(f"{path}: `llama.rope.scaling.type` is {kind!r}; llama_ft supports none, linear and "
                        "llama3 rope scaling; use a model without it.")

    def token_id(key: str) -> int | None:
        v = _field(reader, key)
        return None if v is None else int(v)

    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "_name_or_path": str(path),
        "hidden_size": hidden,
        "intermediate_size": int(_required(reader, path, "llama.feed_forward_length")),
        "num_hidden_layers": int(_required(reader, path, "llama.block_count")),
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "vocab_size": vocab,
        "rms_norm_eps": _f32(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": theta, "rope_scaling": rope_scaling, "max_position_embeddings": context,
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors, "mlp_bias": "blk.0.ffn_up.bias" in tensors,
        "bos_token_id": token_id("tokenizer.ggml.bos_token_id"),
        "eos_token_id": token_id("tokenizer.ggml.eos_token_id"),
        "pad_token_id": token_id("tokenizer.ggml.padding_token_id"),
        "hidden_act": "silu", "torch_dtype": "float32",
    }


def read_gguf_config(path: str | Path) -> dict:
    """config.json dictionary of a GGUF file, from its metadata only (no dequantization)."""
    return gguf_config(open_gguf(path), path)


# ------------------------------------------------------------------ tensors
def _hf_name(name: str) -> tuple[str, str | None]:
    """(Hugging Face name, 'q'/'k' when rows need un-permuting) of a GGUF tensor name."""
    m = _LAYER_RE.match(name)
    if m and m.group(2) in _LAYER_NAMES:
        part = m.group(2)
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[part]}.{m.group(3)}", \
            {"attn_q": "q", "attn_k": "k"}.get(part)
    stem, _, kind = name.rpartition(".")
    if stem in _GLOBAL_NAMES and kind == "weight":
        return f"{_GLOBAL_NAMES[stem]}.weight", None
    raise KeyError(name)


def gguf_state_dict(reader: _gguf.GGUFReader, path: str | Path, config: dict,
                    dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Dequantized tensors under Hugging Face names, q/k rows back in Hugging Face order."""
    path = Path(path)
    out: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":  # folded into config.json's rope_scaling
            continue
        try:
            name, qk = _hf_name(t.name)
        except KeyError:
            raise GGUFError(f"{path}: unexpected tensor `{t.name}`; not a plain Llama model; llama_ft converts "
                            "Llama GGUF files only.") from None
        try:
            arr = _gguf_package().quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise GGUFError(f"{path}: tensor `{t.name}` has type {t.tensor_type.name}, which gguf "
                            f"{_gguf_version()} cannot dequantize; use a GGUF quantized as F32, F16, BF16, Q8_0, "
                            "Q4_0, Q4_1, Q5_0, Q5_1 or a K-quant (Q2_K-Q6_K).") from None
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions fastest-first
        w = torch.from_numpy(np.array(arr, dtype=np.float32).reshape(shape))
        if qk == "q":
            w = unpermute_qk(w, config["num_attention_heads"])
        elif qk == "k":
            w = unpermute_qk(w, config["num_key_value_heads"])
        out[name] = w.to(dtype).contiguous()
    expected = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(config["num_hidden_layers"]):
        expected += [f"model.layers.{i}.{v}.weight" for v in _LAYER_NAMES.values()]
    missing = [n for n in expected if n not in out]
    if missing:
        raise GGUFError(f"{path}: missing {len(missing)} tensor(s), e.g. {missing[:3]}; the file is incomplete "
                        "or not a Llama model; download it again.")
    return out


def _gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("gguf")
    except PackageNotFoundError:
        return "(unknown version)"


# ------------------------------------------------------------------ tokenizer
def gguf_tokenizer(reader: _gguf.GGUFReader, path: str | Path, config: dict) -> tuple[dict, dict] | None:
    """(tokenizer.json, tokenizer_config.json) dictionaries rebuilt from the GGUF token list, or None when
    the GGUF has no byte-level BPE ('gpt2') tokenizer."""
    path = Path(path)
    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        return None
    tokens = list(_required(reader, path, "tokenizer.ggml.tokens"))
    merges_raw = list(_required(reader, path, "tokenizer.ggml.merges"))
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise GGUFError(f"{path}: `tokenizer.ggml.pre` is {pre!r}; llama_ft knows {sorted(_PRE_TOKENIZERS)}; "
                        "use the model's Hugging Face tokenizer.json instead of the GGUF one.")
    if len(types) != len(tokens):
        raise GGUFError(f"{path}: `tokenizer.ggml.token_type` has {len(types)} entries for {len(tokens)} tokens; "
                        "the file is inconsistent.")
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)
    if len(vocab) != len(tokens):
        raise GGUFError(f"{path}: `tokenizer.ggml.tokens` has {len(tokens) - len(vocab)} duplicate entries; "
                        "a BPE vocabulary needs unique tokens.")
    merges = []
    for m in merges_raw:
        parts = m.split(" ")
        if len(parts) != 2:
            raise GGUFError(f"{path}: `tokenizer.ggml.merges` entry {m!r} is not two tokens separated by a space.")
        merges.append((parts[0], parts[1]))
    added = [{"id": i, "content": tokens[i], "special": types[i] == _TOKEN_CONTROL,
              "normalized": types[i] == _TOKEN_USER_DEFINED}
             for i in range(len(tokens)) if types[i] in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED)]

    def tok(key: str) -> str | None:
        i = _field(reader, key)
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    bos, eos, pad, unk = (tok(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding", "unknown"))
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(_field(reader, "tokenizer.ggml.add_eos_token", False)) and eos is not None
    post = byte_level_post_processor(bos=(bos, vocab[bos]) if add_bos else None,
                                     eos=(eos, vocab[eos]) if add_eos else None)
    family, ignore_merges = _PRE_TOKENIZERS[pre]
    tokenizer_json = byte_level_bpe_json(vocab, merges, added, byte_level_pre_tokenizer(family), post,
                                         ignore_merges=ignore_merges)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
        "add_bos_token": add_bos, "add_eos_token": add_eos,
        "model_max_length": config["max_position_embeddings"],
        **{k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("pad_token", pad), ("unk_token", unk))
           if v is not None},
    }
    template = _field(reader, "tokenizer.chat_template")
    if template:
        tokenizer_config["chat_template"] = template
    return tokenizer_json, tokenizer_config


# ------------------------------------------------------------------ conversion
def convert_gguf(path: str | Path, out_dir: str | Path, dtype: str | torch.dtype = torch.float32) -> Path:
    """Write a Hugging Face folder (model.safetensors, config.json, generation_config.json, tokenizer.json,
    tokenizer_config.json) for the Llama GGUF at `path` into `out_dir`; returns `out_dir`."""

    path, out = Path(path), Path(out_dir)
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype not in (torch.float32, torch.bfloat16):
        raise GGUFError(f"{path}: cannot save as {dtype}; dequantized GGUF weights are saved as float32 or "
                        "bfloat16.")
    reader = open_gguf(path)
    config = gguf_config(reader, path)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    state = gguf_state_dict(reader, path, config, dtype)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "source": path.name})
    _write_metadata(reader, path, out, config)
    return out


def convert_gguf_metadata(path: str | Path, out_dir: str | Path) -> Path:
    """The same folder as `convert_gguf` without the weights (config, generation config, tokenizer files):
    what a tokenizer needs, from the GGUF's metadata alone, in a fraction of a second."""
    path, out = Path(path), Path(out_dir)
    reader = open_gguf(path)
    out.mkdir(parents=True, exist_ok=True)
    _write_metadata(reader, path, out, gguf_config(reader, path))
    return out


def _write_metadata(reader: _gguf.GGUFReader, path: Path, out: Path, config: dict) -> None:
    tokenizer = gguf_tokenizer(reader, path, config)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config[k] is not None}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer_json, tokenizer_config = tokenizer
        (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
        (out / "tokenizer_config.json").write_text(
            json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        warnings.warn(f"{path}: `tokenizer.ggml.model` is {_field(reader, 'tokenizer.ggml.model')!r}, not a "
                      "byte-level BPE ('gpt2'); no tokenizer.json written; put the model's tokenizer.json next "
                      "to the converted weights.", stacklevel=3)
