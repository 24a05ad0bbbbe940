"""Malformed config.json documents and model folders end in the library's own errors, naming the file.

Property-based: random JSON values, wrong types, missing fields, lists for objects, huge and negative numbers,
numbers written as strings; truncated or corrupt safetensors files and bad indexes.
"""
import json
import shutil
import struct
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llama_ft
from llama_ft import ConfigError, LlamaConfig, WeightsError
from llama_ft.sources.resolve import SourceError

OURS = (ConfigError, WeightsError, SourceError)
BASE = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 50, "max_position_embeddings": 64, "bos_token_id": 1,
        "eos_token_id": 2, "pad_token_id": 0, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False}
FIELDS = sorted({f for f in LlamaConfig.__dataclass_fields__ if f not in ("extra", "source")}
                | {"rope_parameters", "architectures", "id2label", "label2id", "num_labels", "model_type"})
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)
odd_numbers = st.sampled_from([-1, 0, 1, 3, 2**14 + 1, 2**31, 2**63, 10**30, -10**30, 1e-300, 1e308,
                               float("inf"), float("nan"), True])
strings_for_numbers = (st.integers(-10, 10**6) | st.floats(allow_nan=True)).map(str)
rope = st.fixed_dictionaries(
    {"rope_type": st.sampled_from(["llama3", "linear", "default", "yarn"]) | json_values},
    optional={k: odd_numbers | strings_for_numbers | json_values
              for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings",
                        "rope_theta")})
field_values = json_values | odd_numbers | strings_for_numbers | rope


@st.composite
def config_docs(draw):
    """A config.json document: mostly a valid one with fields dropped and set to odd values, sometimes any JSON."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    doc = dict(BASE)
    for key in draw(st.lists(st.sampled_from(sorted(doc)), max_size=3)):
        doc.pop(key, None)
    for key in draw(st.lists(st.sampled_from(FIELDS) | st.sampled_from(FIELDS) | st.text(max_size=6), max_size=4)):
        doc[key] = draw(field_values)
    return doc


def _dumps(doc) -> str:
    return json.dumps(doc)  # NaN and Infinity as Python's json writes and reads them


def assert_ours_naming(e: BaseException, name: str) -> None:
    assert isinstance(e, OURS), f"raw {type(e).__name__}: {e}"
    assert name in str(e), f"{type(e).__name__} does not name {name}: {e}"


@SETTINGS
@given(doc=config_docs())
def test_any_config_json_is_a_buildable_config_or_a_config_error_naming_the_file(doc):
    """A config that loads describes a model that builds (on the meta device: no memory)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.json"
        path.write_text(_dumps(doc))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                llama_ft.build_model(LlamaConfig.from_pretrained(path), device="meta")
        except Exception as e:  # noqa: BLE001 -- the property: nothing but the library's own errors
            assert_ours_naming(e, str(path))


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    """A tiny classification export, sharded (an index and 3+ shards) beside a single-file copy."""
    root = tmp_path_factory.mktemp("malformed")
    torch.manual_seed(0)
    model = llama_ft.random_model(LlamaConfig.from_dict(BASE), "classification", seed=0)
    llama_ft.save_pretrained(model, root / "single", dtype="fp32")
    llama_ft.save_pretrained(model, root / "sharded", dtype="fp32", max_shard_bytes=12_000)
    return root


damages = st.sampled_from(["none", "truncate", "garbage-header", "index", "index-to-wrong-shard", "no-shard"])


@SETTINGS
@given(doc=config_docs() | st.just(None), damage=damages, layout=st.sampled_from(["single", "sharded"]),
       cut=st.floats(0, 1), header=json_values, index=json_values)
def test_any_malformed_model_folder_loads_or_fails_with_a_library_error_naming_it(
        base_folder, doc, damage, layout, cut, header, index):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "model"
        shutil.copytree(base_folder / layout, folder)
        if doc is not None:
            (folder / "config.json").write_text(_dumps(doc))
        shards = sorted(folder.glob("*.safetensors"))
        victim = shards[int(cut * (len(shards) - 1))]
        if damage == "truncate":
            data = victim.read_bytes()
            victim.write_bytes(data[:int(cut * len(data))])
        elif damage == "garbage-header":
            text = _dumps(header).encode()
            victim.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 64)
        elif damage == "index":
            (folder / "model.safetensors.index.json").write_text(
                _dumps(index if cut < 0.5 else {"weight_map": index}))
        elif damage == "index-to-wrong-shard" and layout == "sharded":
            idx = json.loads((folder / "model.safetensors.index.json").read_text())
            idx["weight_map"] = {k: victim.name for k in idx["weight_map"]}
            (folder / "model.safetensors.index.json").write_text(json.dumps(idx))
        elif damage == "no-shard":
            victim.unlink()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                llama_ft.from_pretrained(folder)
        except Exception as e:  # noqa: BLE001 -- the property: nothing but the library's own errors
            assert_ours_naming(e, str(folder))


@pytest.mark.parametrize("where", ["tokenizer_config.json", "special_tokens_map.json"])
def test_a_config_without_pad_id_pads_with_the_tokenizers_pad_token_and_exports(tmp_path, smollm2_dir, where):
    """config.json without `pad_token_id` next to tokenizer files that name a `pad_token`: the model pads with
    the tokenizer's pad token (not EOS), so the two agree and export together."""
    folder = tmp_path / "model"
    model = llama_ft.random_model(llama_ft.LlamaConfig.from_dict(dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=49152, bos_token_id=1, eos_token_id=2)), "causal-lm", seed=0)
    llama_ft.save_pretrained(model, folder, dtype="float32")
    cfg = json.loads((folder / "config.json").read_text())
    for k in ("pad_token_id", "pad_token_id_source"):
        cfg.pop(k, None)
    (folder / "config.json").write_text(json.dumps(cfg))
    shutil.copy(smollm2_dir / "tokenizer.json", folder)
    tok_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    tok_config.pop("pad_token")
    if where == "tokenizer_config.json":
        tok_config["pad_token"] = "<|endoftext|>"  # id 0; EOS is 2
    else:
        (folder / where).write_text(json.dumps({"pad_token": {"content": "<|endoftext|>", "special": True}}))
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    loaded = llama_ft.from_pretrained(folder)
    tok = llama_ft.load_tokenizer(folder)
    assert tok.pad_token_id == 0 and tok.pad_token_source == "pad_token"
    assert (loaded.config.pad_token_id, loaded.config.extra["pad_token_id_source"]) == (0, "pad_token")
    out = llama_ft.save_pretrained(loaded, tmp_path / "export", tokenizer=tok)
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == 0
