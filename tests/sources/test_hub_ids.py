"""Hub ids: one rule for what `owner/name` is, used by sources, model cards, Hub uploads and the recipes."""
import pytest

from llama_ft import LlamaConfig
from llama_ft.hf.hub import HubError, check_repo_id
from llama_ft.hf.model_card import guess_base_model
from llama_ft.sources.hub_ids import PRESET_HUB_IDS, hub_id_for, is_repo_id, looks_like_hub_id
from llama_ft.sources.resolve import HUB_PRESETS, SourceError, resolve

GOOD = ["meta-llama/Llama-3.2-1B", "HuggingFaceTB/SmolLM2-135M-Instruct", "a/b", "me/x_y.z-1"]
BAD = ["smollm2-sst2", "me/a/b", "/name", "me/", "me/bad--name", "me/with space", "-me/x", "me/x.", "me/a..b",
       "me/" + "n" * 97, None, 3]


@pytest.mark.parametrize("repo_id", GOOD)
def test_valid_repo_ids(repo_id):
    assert is_repo_id(repo_id) and check_repo_id(repo_id) == repo_id


@pytest.mark.parametrize("repo_id", BAD)
def test_invalid_repo_ids_are_refused_by_every_user_of_the_rule(repo_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not is_repo_id(repo_id) and not looks_like_hub_id(repo_id)
    with pytest.raises(HubError, match="owner/name"):
        check_repo_id(repo_id)
    if isinstance(repo_id, str):
        assert hub_id_for(repo_id) is None
        assert guess_base_model(LlamaConfig(extra={"_name_or_path": repo_id})) is None
        with pytest.raises(SourceError):
            resolve(repo_id)


def test_a_local_folder_or_model_file_is_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "ckpt").mkdir(parents=True)
    for s in ("runs/ckpt", "me/model.gguf", "me/config.json", "me/model.safetensors"):
        assert is_repo_id(s) and not looks_like_hub_id(s) and hub_id_for(s) is None, s
    assert hub_id_for("me/model") == "me/model"


def test_presets_name_one_hub_model_each_everywhere():
    assert hub_id_for("SmolLM2-135M") == PRESET_HUB_IDS["smollm2-135m"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id_for("llama-3.2-1b") == HUB_PRESETS["llama-3.2-1b"] == "meta-llama/Llama-3.2-1B"
    for name, hub in PRESET_HUB_IDS.items():
        assert LlamaConfig.from_pretrained(name).extra["_name_or_path"] == hub
        assert guess_base_model(LlamaConfig.from_pretrained(name)) == hub
