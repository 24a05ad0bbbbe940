"""LlamaConfig: reading Hugging Face config.json files, presets, and the errors for bad ones."""
import json

import pytest

from llama_ft import ConfigError, LlamaConfig

LLAMA_DIR = "../shared/data/llama3/Llama-3.2-1B"


def test_preset_equals_shared_llama_config(shared):
    from_file = LlamaConfig.from_pretrained(shared / "data/llama3/Llama-3.2-1B")
    assert from_file == LlamaConfig.from_pretrained("llama-3.2-1b")
    assert from_file.rope_type == "llama3" and from_file.tie_word_embeddings
    assert (from_file.num_key_value_heads, from_file.head_dim) == (8, 64)


def test_round_trip_keeps_every_field(tmp_path, shared):
    src = json.loads((shared / "data/llama3/Llama-3.2-1B/config.json").read_text())
    cfg = LlamaConfig.from_dict(src)
    cfg.save_pretrained(tmp_path)
    back = json.loads((tmp_path / "config.json").read_text())
    for k, v in src.items():
        assert back[k] == v, k
    assert LlamaConfig.from_pretrained(tmp_path) == cfg


def test_unknown_fields_are_kept_with_a_warning(tmp_path):
    d = dict(LlamaConfig().to_dict(), my_new_field=3)
    with pytest.warns(UserWarning, match="my_new_field"):
        cfg = LlamaConfig.from_dict(d)
    assert cfg.to_dict()["my_new_field"] == 3


@pytest.mark.parametrize("change,message", [
    (dict(hidden_size=None), "hidden_size"),
    (dict(num_attention_heads=7), "not divisible"),
    (dict(num_key_value_heads=4), "does not divide"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "not supported"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "low_freq_factor"),
])
def test_bad_configs_name_the_field(tmp_path, change, message):
    d = {k: v for k, v in LlamaConfig().to_dict().items() if k != "head_dim"}
    d.update(change)
    d = {k: v for k, v in d.items() if v is not None}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=message) as e:
        LlamaConfig.from_pretrained(path)
    assert str(path) in str(e.value)


def test_not_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        LlamaConfig.from_json_file(path)


def test_transformers_5_rope_parameters_are_read():
    d = {k: v for k, v in LlamaConfig().to_dict().items() if k not in ("rope_theta", "rope_scaling")}
    d["rope_parameters"] = {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = LlamaConfig.from_dict(d)
    assert cfg.rope_theta == 500000.0 and cfg.rope_type == "llama3" and cfg.rope_scaling["factor"] == 32.0
    d["rope_parameters"] = {"rope_theta": 1e4, "rope_type": "default"}
    assert LlamaConfig.from_dict(d).rope_scaling is None
