"""GGUF -> Hugging Face folder: q/k permutation, names, config, dequantization, bad files, the embedded model.

Tiny GGUFs are written in tmp_path with gguf.GGUFWriter (tests/ggufmaker.py) from random transformers models,
which are the oracle; the embedded SmolLM2 GGUF is converted once per session (conftest `smollm2_dir`).
"""
import json
import shutil
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
import transformers
from ggufmaker import Q, gguf_name, llama3_rope_factors, tiny_vocab, write_llama_gguf
from safetensors.torch import load_file

import llama_ft
from llama_ft.hf.loading import load_tokenizer
from llama_ft.sources.gguf import GGUFError, convert_gguf, permute_qk, read_gguf_config, unpermute_qk

VOCAB = len(tiny_vocab()[0])
TINY = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": VOCAB, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
        "tie_word_embeddings": False}


def hf_tiny(seed=0, **over) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**dict(TINY, **over))).eval()
    with torch.no_grad():  # transformers initialises norms to 1: make them informative
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def hf_state(model) -> dict:
    sd = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight")
    return sd


# ------------------------------------------------------------------ q/k permutation
@pytest.mark.parametrize("n_head,head_dim,cols", [(4, 16, 64), (9, 64, 5), (3, 8, 1), (1, 2, 3)])
def test_qk_permutation_round_trip(n_head, head_dim, cols):
    w = torch.randn(n_head * head_dim, cols)
    assert torch.equal(unpermute_qk(permute_qk(w, n_head), n_head), w)
    assert torch.equal(permute_qk(unpermute_qk(w, n_head), n_head), w)
    b = torch.randn(n_head * head_dim)  # biases are permuted the same way
    assert torch.equal(unpermute_qk(permute_qk(b, n_head), n_head), b)


def test_permutation_interleaves_rotary_halves():
    """llama.cpp rotates rows (2i, 2i+1) together; Hugging Face rotates rows (i, i + head_dim/2)."""
    n_head, d = 3, 8
    rows = torch.arange(n_head * d, dtype=torch.float32)[:, None]
    permuted = permute_qk(rows, n_head)[:, 0].long().tolist()
    expected = []
    for h in range(n_head):
        for i in range(d // 2):
            expected += [h * d + i, h * d + i + d // 2]
    assert permuted == expected


# ------------------------------------------------------------------ round trips through tiny GGUFs
@pytest.mark.parametrize("tied", [False, True])
def test_f32_gguf_round_trip_matches_transformers(tmp_path, monkeypatch, tied):
    monkeypatch.setenv("LLAMA_FT_CACHE", str(tmp_path / "cache"))
    ref = hf_tiny(tie_word_embeddings=tied)
    path = write_llama_gguf(tmp_path / "tiny.gguf", hf_state(ref), dict(TINY, tie_word_embeddings=tied))
    out = convert_gguf(path, tmp_path / "hf")
    state = load_file(out / "model.safetensors")
    assert set(state) == set(hf_state(ref))
    for name, tensor in hf_state(ref).items():
        assert torch.equal(state[name], tensor), name
    cfg = json.loads((out / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                "bos_token_id", "eos_token_id", "pad_token_id"):
        assert cfg[key] == TINY[key], key
    assert cfg["tie_word_embeddings"] is tied and cfg["head_dim"] == 16 and cfg["rope_scaling"] is None
    back = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ours = llama_ft.from_pretrained(path)
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        expected = ref(ids).logits
        assert torch.equal(back(ids).logits, expected)
        torch.testing.assert_close(ours(ids), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.F16, Q.BF16])
def test_quantized_tensors_dequantize(tmp_path, qtype):
    ref = hf_tiny(seed=1)
    sd = hf_state(ref)
    path = write_llama_gguf(tmp_path / "q.gguf", sd, TINY, qtypes={".weight": qtype})
    state = load_file(convert_gguf(path, tmp_path / "hf") / "model.safetensors")
    reader = gguf.GGUFReader(path)
    for t in reader.tensors:
        hf = next(n for n in sd if gguf_name(n) == t.name)
        expected = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type)))
        expected = expected.reshape(sd[hf].shape)
        if t.name.endswith("attn_q.weight"):
            expected = unpermute_qk(expected, TINY["num_attention_heads"])
        elif t.name.endswith("attn_k.weight"):
            expected = unpermute_qk(expected, TINY["num_key_value_heads"])
        assert torch.equal(state[hf], expected), t.name
        assert t.tensor_type == (qtype if sd[hf].ndim == 2 else Q.F32)
        tol = {Q.F16: 1e-3, Q.BF16: 1e-2, Q.Q8_0: 2e-2}.get(qtype, 0.25)
        assert (state[hf] - sd[hf]).abs().max() < tol * sd[hf].abs().max(), t.name


@pytest.mark.parametrize("qtype,scale_at", [(Q.Q4_K, 0), (Q.Q6_K, 208)])
def test_k_quants_dequantize(tmp_path, qtype, scale_at):
    """gguf cannot quantize K-quants, so blocks are random bytes with a small fp16 scale (d) patched in."""
    cfg = dict(TINY, hidden_size=256, intermediate_size=256, num_attention_heads=4, num_key_value_heads=4,
               num_hidden_layers=1)
    sd = hf_state(hf_tiny(seed=2, **{k: v for k, v in cfg.items() if k in TINY}))
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (256, 256 // block * size), dtype=np.uint8)
    scales = data.reshape(256, -1, size)
    scales[:, :, scale_at:scale_at + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    if qtype == Q.Q4_K:
        scales[:, :, 2:4] = np.frombuffer(np.float16(0.005).tobytes(), np.uint8)  # dmin
    path = write_llama_gguf(tmp_path / "k.gguf", sd, cfg, raw={"blk.0.attn_q.weight": (data, qtype),
                                                               "blk.0.ffn_down.weight": (data, qtype)})
    state = load_file(convert_gguf(path, tmp_path / "hf") / "model.safetensors")
    deq = torch.from_numpy(np.array(gguf.quants.dequantize(data, qtype))).reshape(256, 256)
    assert torch.isfinite(deq).all() and deq.abs().max() > 0
    assert torch.equal(state["model.layers.0.mlp.down_proj.weight"], deq)
    assert torch.equal(state["model.layers.0.self_attn.q_proj.weight"], unpermute_qk(deq, 4))


def test_llama3_rope_scaling_recovered_from_rope_freqs(tmp_path):
    rope = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
    cfg = dict(TINY, rope_theta=500000.0, rope_scaling=dict(rope), head_dim=64, hidden_size=256,
               intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072)
    factors = llama3_rope_factors(500000.0, 64, 32.0, 1.0, 4.0, 8192)
    path = write_llama_gguf(tmp_path / "r.gguf", hf_state(hf_tiny(seed=3, **cfg)), cfg, rope_freqs=factors)
    got = read_gguf_config(path)
    assert got["rope_scaling"] == rope and got["rope_theta"] == 500000.0


def test_linear_rope_scaling_from_metadata(tmp_path):
    path = write_llama_gguf(tmp_path / "l.gguf", hf_state(hf_tiny()), TINY,
                            metadata={"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0})
    assert read_gguf_config(path)["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}


def test_tokenizer_and_chat_template_from_gguf(tmp_path):
    path = write_llama_gguf(tmp_path / "t.gguf", hf_state(hf_tiny()), TINY, add_bos=True)
    tok = load_tokenizer(convert_gguf(path, tmp_path / "hf"))
    assert tok.encode("the") == [1, tok.token_to_id("t"), tok.token_to_id("he")]  # add_bos_token = true
    assert tok.encode(" the", add_special_tokens=False) == [tok.token_to_id("Ġthe")]
    assert tok.encode("<|im_end|>", add_special_tokens=False) == [2]
    assert tok.decode(tok.encode("héllo wörld 42", add_special_tokens=False)) == "héllo wörld 42"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


# ------------------------------------------------------------------ bad files
@pytest.fixture
def tiny_gguf(tmp_path):
    return write_llama_gguf(tmp_path / "ok.gguf", hf_state(hf_tiny()), TINY)


def test_truncated_gguf(tiny_gguf, tmp_path):
    for keep in (tiny_gguf.stat().st_size - 100, tiny_gguf.stat().st_size // 2, 64):
        bad = tmp_path / f"cut{keep}.gguf"
        bad.write_bytes(tiny_gguf.read_bytes()[:keep])
        with pytest.raises(GGUFError, match=rf"cut{keep}\.gguf.*truncated"):
            convert_gguf(bad, tmp_path / "out")


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(GGUFError, match=r"model\.gguf: not a GGUF file"):
        convert_gguf(bad, tmp_path / "out")


def test_unsupported_tensor_type(tmp_path):
    sd = hf_state(hf_tiny())
    size = gguf.GGML_QUANT_SIZES[Q.Q8_1][1]
    data = np.zeros((64, 64 // 32 * size), dtype=np.uint8)
    path = write_llama_gguf(tmp_path / "q81.gguf", sd, TINY, raw={"blk.1.attn_v.weight": (data, Q.Q8_1)})
    with pytest.raises(GGUFError, match=r"q81\.gguf: tensor `blk\.1\.attn_v\.weight` has type Q8_1"):
        convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_other_architecture(tmp_path):
    path = write_llama_gguf(tmp_path / "qwen.gguf", hf_state(hf_tiny()), TINY, arch="qwen2")
    with pytest.raises(GGUFError, match=r"qwen\.gguf: `general\.architecture` is 'qwen2'"):
        convert_gguf(path, tmp_path / "out")


def test_tokenizer_larger_than_embedding(tmp_path):
    tokens = tiny_vocab()[0] + [f"extra{i}" for i in range(10)]
    path = write_llama_gguf(tmp_path / "big.gguf", hf_state(hf_tiny()), TINY, tokens=tokens)
    with pytest.raises(GGUFError, match=rf"big\.gguf: `tokenizer\.ggml\.tokens` has {VOCAB + 10} tokens but "
                                        rf"`token_embd\.weight` has {VOCAB} rows"):
        convert_gguf(path, tmp_path / "out")


def test_unknown_pre_tokenizer(tmp_path):
    path = write_llama_gguf(tmp_path / "pre.gguf", hf_state(hf_tiny()), TINY, pre="qwen2")
    with pytest.raises(GGUFError, match=r"pre\.gguf: `tokenizer\.ggml\.pre` is 'qwen2'"):
        convert_gguf(path, tmp_path / "out")


# ------------------------------------------------------------------ the embedded SmolLM2-135M-Instruct
@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    # One thread: on the shared 2-core machine, two contending torch threads run ~5x slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield llama_ft.from_pretrained("smollm2-135m")
    torch.set_num_threads(threads)


def test_embedded_config_matches_preset(smollm2_dir):
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    preset = llama_ft.PRESETS["smollm2-135m"]
    for key, value in preset.items():
        if key != "_name_or_path":
            assert cfg[key] == value, key
    assert not (smollm2_dir / "tokenizer.json").read_text().count('"lm_head.weight"')
    assert json.loads((smollm2_dir / "generation_config.json").read_text())["eos_token_id"] == 2


def test_embedded_greedy_answer_contains_paris(smollm2):
    tok = load_tokenizer("smollm2-135m")
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    out = llama_ft.generate(smollm2, [tok.encode(prompt)], max_new_tokens=10, stop_ids=tok.eos_token_ids)
    assert "Paris" in tok.decode(out[0]), tok.decode(out[0])


def test_embedded_logits_match_transformers(smollm2, smollm2_dir):
    ref = transformers.LlamaForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ids = torch.tensor([load_tokenizer(smollm2_dir).encode("The capital of France is Paris. 12345 ☃")])
    with torch.no_grad():
        torch.testing.assert_close(smollm2(ids), ref(ids).logits, atol=1e-4, rtol=0)


def test_bf16_conversion(tiny_gguf, tmp_path):
    out = convert_gguf(tiny_gguf, tmp_path / "bf16", dtype="bfloat16")
    state = load_file(out / "model.safetensors")
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    shutil.rmtree(out)


def test_gguf_package_is_imported_only_when_a_gguf_is_read(tmp_path):
    """`import llama_ft` leaves the gguf package alone (only GGUF sources need it); reading a GGUF imports it."""
    path = write_llama_gguf(tmp_path / "m.gguf", hf_state(hf_tiny()), TINY)
    code = ("import sys, llama_ft\n"
            "assert 'gguf' not in sys.modules, 'import llama_ft imported gguf'\n"
            "from llama_ft.sources.gguf import read_gguf_config\n"
            "assert 'gguf' not in sys.modules\n"
            f"read_gguf_config({str(path)!r})\n"
            "assert 'gguf' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
