"""Test helper: write small llama.cpp-style GGUF files (gguf.GGUFWriter) from a Hugging Face Llama state dict."""
from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import torch

from llama_ft.sources.gguf import permute_qk
from llama_ft.tokenizer import bytes_to_unicode

Q = gguf.GGMLQuantizationType
_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
          "post_attention_layernorm": "ffn_norm"}
_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("Ġa", "n"), ("o", "n")]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of a 267-token byte-level BPE: 3 control tokens, 256 bytes, 8 merges."""
    tokens = SPECIALS + list(bytes_to_unicode().values()) + [a + b for a, b in MERGES]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types, [f"{a} {b}" for a, b in MERGES]


def gguf_name(hf: str) -> str:
    if hf in _GLOBAL:
        return _GLOBAL[hf]
    parts = hf.split(".")  # model.layers.N.<module...>.weight
    return f"blk.{parts[2]}.{_LAYER['.'.join(parts[3:-1])]}.{parts[-1]}"


def llama3_rope_factors(theta: float, head_dim: int, factor: float, low: float, high: float,
                        original: int) -> np.ndarray:
    """`rope_freqs.weight` as llama.cpp's converter computes it for Llama 3.1-style rope scaling."""
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_llama_gguf(path: Path, state: dict[str, torch.Tensor], cfg: dict, *, qtypes: dict | None = None,
                     raw: dict | None = None, arch: str = "llama", tokens: list[str] | None = None,
                     pre: str = "smollm", add_bos: bool = False, rope_freqs: np.ndarray | None = None,
                     metadata: dict | None = None) -> Path:
    """Write `state` (Hugging Face names) as a GGUF the way llama.cpp's converter lays it out.

    qtypes maps a GGUF tensor-name suffix ("attn_q.weight") to a quantization type; raw maps a full GGUF
    tensor name to (uint8 bytes array, type) written as is.
    """
    qtypes, raw = qtypes or {}, raw or {}
    w = gguf.GGUFWriter(str(path), arch)
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-5))
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg["vocab_size"])
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, value)
    t, types, merges = tiny_vocab()
    tokens = tokens if tokens is not None else t
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types((types + [1] * len(tokens))[:len(tokens)])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(add_bos)
    w.add_chat_template(CHATML)
    for hf, tensor in state.items():
        name = gguf_name(hf)
        x = tensor.detach().float()
        if name.endswith(("attn_q.weight", "attn_q.bias")):
            x = permute_qk(x, heads)
        elif name.endswith(("attn_k.weight", "attn_k.bias")):
            x = permute_qk(x, kv)
        arr = x.numpy().astype(np.float32)
        if name in raw:
            data, qtype = raw[name]
            w.add_tensor(name, data, raw_dtype=qtype)
            continue
        qtype = next((q for suffix, q in qtypes.items() if name.endswith(suffix)), None)
        if qtype is None or arr.ndim == 1:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
