"""Safetensors loading into meta-built models: round trips, dtypes, sharding, and strict errors."""
import json

import pytest
import torch

import llama_ft
from llama_ft import LlamaConfig, WeightsError
from llama_ft.hf.weights import save_weights, state_dict_for_saving

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=101, tie_word_embeddings=True, eos_token_id=2)


def saved(tmp_path, task="causal-lm", max_shard_bytes=1 << 30, **cfg):
    cfg = LlamaConfig.from_dict(dict(SMALL, **cfg))
    model = llama_ft.random_model(cfg, task, seed=0)
    llama_ft.save_pretrained(model, tmp_path, dtype=torch.float32, max_shard_bytes=max_shard_bytes)
    return model


@pytest.mark.parametrize("shard", [1 << 30, 20_000])
def test_round_trip_same_logits(tmp_path, shard):
    model = saved(tmp_path, max_shard_bytes=shard)
    assert (tmp_path / "model.safetensors.index.json").is_file() == (shard < 1 << 30)
    back = llama_ft.from_pretrained(tmp_path)
    ids = torch.randint(0, 101, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids), back(ids))
    assert back.lm_head.weight is back.model.embed_tokens.weight  # tied again after loading


def test_loads_into_bf16_without_fp32_copy(tmp_path):
    saved(tmp_path)
    m = llama_ft.from_pretrained(tmp_path, dtype="bf16")
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in m.parameters()) and not m.model.rotary_emb.inv_freq.is_meta


def test_base_checkpoint_under_a_task_head(tmp_path):
    base = saved(tmp_path)
    clf = llama_ft.from_pretrained(tmp_path, task="classification", num_labels=3, seed=0)
    qa = llama_ft.from_pretrained(tmp_path, task="qa")
    assert clf.score.weight.shape == (3, 64) and qa.qa_outputs.bias.shape == (2,)
    assert torch.equal(qa.transformer.layers[1].mlp.up_proj.weight, base.model.layers[1].mlp.up_proj.weight)
    assert clf.score.weight.std().item() == pytest.approx(0.02, rel=0.5)


def test_qa_export_uses_transformer_prefix_and_reloads(tmp_path):
    qa = saved(tmp_path, task="qa")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "transformer.embed_tokens.weight" in keys and "qa_outputs.bias" in keys
    back = llama_ft.from_pretrained(tmp_path)
    assert back.task == "qa"
    assert torch.equal(back.qa_outputs.weight, qa.qa_outputs.weight)


def test_missing_tensor_is_named(tmp_path):
    model = saved(tmp_path)
    sd = state_dict_for_saving(model)
    del sd["model.layers.1.mlp.down_proj.weight"]
    save_weights(sd, tmp_path)
    with pytest.raises(WeightsError, match="layers.1.mlp.down_proj.weight"):
        llama_ft.from_pretrained(tmp_path)


def test_untied_causal_lm_without_its_lm_head_is_an_error_not_a_random_head(tmp_path):
    model = saved(tmp_path, tie_word_embeddings=False)
    sd = state_dict_for_saving(model)
    del sd["lm_head.weight"]
    save_weights(sd, tmp_path)
    with pytest.raises(WeightsError, match="lm_head.weight"):
        llama_ft.from_pretrained(tmp_path)
    clf = llama_ft.from_pretrained(tmp_path, task="classification")  # a task head replaces lm_head: fine
    assert clf.score.weight.shape == (2, 64)


def test_tied_config_ignores_a_stored_lm_head_copy(tmp_path):
    model = saved(tmp_path)
    sd = state_dict_for_saving(model)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()  # as some exporters store it
    save_weights(sd, tmp_path)
    back = llama_ft.from_pretrained(tmp_path)
    assert back.lm_head.weight is back.model.embed_tokens.weight


def test_wrong_shape_names_tensor_shapes_and_file(tmp_path):
    model = saved(tmp_path)
    sd = state_dict_for_saving(model)
    sd["model.norm.weight"] = torch.ones(63)
    save_weights(sd, tmp_path)
    with pytest.raises(WeightsError, match=r"model.norm.weight.*\(63,\).*\(64,\)") as e:
        llama_ft.from_pretrained(tmp_path)
    assert "model.safetensors" in str(e.value)


def test_unexpected_tensor_is_named(tmp_path):
    model = saved(tmp_path)
    sd = state_dict_for_saving(model)
    sd["model.layers.2.mlp.up_proj.weight"] = torch.ones(2, 2)
    save_weights(sd, tmp_path)
    with pytest.raises(WeightsError, match="layers.2"):
        llama_ft.from_pretrained(tmp_path)


def test_truncated_file_is_a_clear_error(tmp_path):
    saved(tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated"):
        llama_ft.from_pretrained(tmp_path)


def test_folder_without_weights(tmp_path):
    LlamaConfig.from_dict(SMALL).save_pretrained(tmp_path)
    with pytest.raises(Exception, match="weights"):
        llama_ft.from_pretrained(tmp_path)


def test_index_pointing_to_missing_shard(tmp_path):
    saved(tmp_path, max_shard_bytes=20_000)
    idx = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    (tmp_path / sorted(set(idx["weight_map"].values()))[-1]).unlink()
    with pytest.raises(WeightsError, match="missing"):
        llama_ft.from_pretrained(tmp_path)


@pytest.mark.parametrize("weight_map,found", [
    (["model-00001-of-00002.safetensors"], r"`weight_map` = \['model-00001-of-00002\.safetensors'\]"),
    ({"lm_head.weight": "../elsewhere.safetensors"}, r"`weight_map` = \{'lm_head\.weight': '\.\./elsewhere"),
    (None, r"`weight_map` = None"),
])
def test_an_index_whose_weight_map_is_not_a_name_to_shard_object_is_a_weights_error(tmp_path, weight_map, found):
    saved(tmp_path, max_shard_bytes=20_000)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(WeightsError, match=rf"{index}: not a safetensors index: `weight_map` must be an object "
                                           rf"mapping tensor names to shard file names in this folder, found {found}"):
        llama_ft.from_pretrained(tmp_path)


def test_an_index_that_is_a_json_list_is_a_weights_error(tmp_path):
    saved(tmp_path, max_shard_bytes=20_000)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text("[]")
    with pytest.raises(WeightsError, match=rf"{index}: not a safetensors index: .* found a JSON list"):
        llama_ft.from_pretrained(tmp_path)


def test_shards_are_written_atomically_with_no_temporary_file_left(tmp_path):
    saved(tmp_path, max_shard_bytes=20_000)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in names if "tmp" in n], names
    assert "model.safetensors.index.json" in names
