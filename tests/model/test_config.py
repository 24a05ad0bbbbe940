"""LlamaConfig: reading Hugging Face config.json files, presets, and the errors for bad ones."""
import json

import pytest

from llama_ft import ConfigError, LlamaConfig

LLAMA_DIR = "../shared/data/llama3/Llama-3.2-1B"
TINY_CONFIG = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "vocab_size": 101, "eos_token_id": 2}


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


# ------------------------------------------------------------------ every field's type and range
def _write(tmp_path, doc) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.mark.parametrize("field,value,found,fix", [
    ("rope_theta", "abc", '"abc" (a JSON string)', "positive finite number"),
    ("rms_norm_eps", "1e-5", '"1e-5" (a JSON string)', "without the quotes: 1e-05"),
    ("tie_word_embeddings", "false", '"false" (a JSON string)', "without the quotes: false"),
    ("eos_token_id", "2", '"2" (a JSON string)', "without the quotes: 2"),
    ("max_position_embeddings", -1, "-1 (a JSON number)", "positive integer"),
    ("pad_token_id", 101, "101 (a JSON number)", "token id from 0 to `vocab_size` - 1"),
    ("rms_norm_eps", float("nan"), "NaN (a JSON number)", "positive finite number"),
    ("num_hidden_layers", 10**9, "1000000000 (a JSON number)", "up to 1024"),
    ("architectures", {"a": 1}, "{'a': 1} (a JSON object)", "list of class names"),
])
def test_each_wrong_field_is_a_config_error_naming_file_field_value_and_fix(tmp_path, field, value, found, fix):
    path = _write(tmp_path, {**TINY_CONFIG, field: value})
    with pytest.raises(ConfigError) as e:
        LlamaConfig.from_pretrained(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: `{field}` must be ") and f"found {found}" in msg and fix in msg, msg


def test_pad_token_id_beyond_the_vocabulary_fails_at_load_not_in_the_embedding(tmp_path):
    import llama_ft
    from tiny import tiny_model

    folder = llama_ft.save_pretrained(tiny_model("classification"), tmp_path / "m", dtype="fp32")
    doc = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**doc, "pad_token_id": doc["vocab_size"]}))
    with pytest.raises(ConfigError, match=r"config\.json: `pad_token_id` must be null or a token id"):
        llama_ft.from_pretrained(folder)


def test_rope_scaling_values_are_checked_too(tmp_path):
    rope = {"rope_type": "llama3", "factor": "8", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}
    path = _write(tmp_path, {**TINY_CONFIG, "rope_scaling": rope})
    with pytest.raises(ConfigError, match=r"`rope_scaling\.factor` must be a positive finite number, found \"8\" "
                                          r"\(a JSON string\); write it without the quotes: 8"):
        LlamaConfig.from_pretrained(path)


def test_a_config_json_holding_a_list_is_a_config_error(tmp_path):
    path = _write(tmp_path, [TINY_CONFIG])
    with pytest.raises(ConfigError, match=rf"{path}: a config.json must hold one JSON object of fields, found "
                                          r"\[.*\(a JSON list\); restore"):
        LlamaConfig.from_pretrained(path)


def test_a_list_config_json_in_a_model_folder_is_a_library_error(tmp_path):
    import llama_ft
    from tiny import tiny_model

    folder = llama_ft.save_pretrained(tiny_model("classification"), tmp_path / "m", dtype="fp32")
    (folder / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="a JSON list"):
        llama_ft.from_pretrained(folder)


def test_a_config_file_given_as_the_model_says_to_pass_its_folder(tmp_path):
    import llama_ft
    from tiny import tiny_model

    folder = llama_ft.save_pretrained(tiny_model("classification"), tmp_path / "m", dtype="fp32")
    for load in (llama_ft.load_tokenizer, llama_ft.from_pretrained):
        with pytest.raises(ConfigError, match=rf"{folder}/config\.json: a model's config\.json, given where a "
                                              rf"model is expected; pass the folder that holds it \({folder}\)"):
            load(str(folder / "config.json"))


def test_transformers_5_rope_parameters_must_be_an_object(tmp_path):
    path = _write(tmp_path, {**TINY_CONFIG, "rope_parameters": [500000.0]})
    with pytest.raises(ConfigError, match=r"`rope_parameters` must be an object, found \[500000\.0\]"):
        LlamaConfig.from_pretrained(path)
