"""push_to_hub, tested with the network boundary replaced: no Hub is reachable here.

`huggingface_hub.HfApi` inside llama_ft.hf.hub is swapped for a recording fake that checks each call against the
real method's signature and fails on any other API method, and sockets refuse to connect, so these tests show
what would be uploaded (repo id, visibility, files, one commit) without sending anything.
"""
import inspect
import socket
from types import SimpleNamespace
from typing import ClassVar

import pytest
from huggingface_hub import HfApi, ModelCard, RepoUrl
from huggingface_hub.errors import HfHubHTTPError

import llama_ft
from llama_ft import LlamaConfig
from llama_ft.hf import hub
from llama_ft.hf.hub import HubError

TOKEN = "hf_FAKEtokenNeverToBeSeen0123456789"
SMALL = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2,
         "vocab_size": 64, "eos_token_id": 2, "pad_token_id": 0}


class FakeApi:
    """Stands in for HfApi: records calls (and the files present at upload time), sends nothing."""

    calls: ClassVar[list] = []
    fail_with: ClassVar[Exception | None] = None

    def __init__(self, **kwargs):
        inspect.signature(HfApi.__init__).bind(self, **kwargs)
        FakeApi.calls.append(("HfApi", kwargs))

    def create_repo(self, repo_id, **kwargs):
        inspect.signature(HfApi.create_repo).bind(self, repo_id, **kwargs)
        FakeApi.calls.append(("create_repo", dict(kwargs, repo_id=repo_id)))
        if FakeApi.fail_with is not None:
            raise FakeApi.fail_with
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        inspect.signature(HfApi.upload_folder).bind(self, **kwargs)
        files = {p.name: p.read_bytes() for p in kwargs["folder_path"].rglob("*") if p.is_file()}
        FakeApi.calls.append(("upload_folder", dict(kwargs, files=files)))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc")

    def __getattr__(self, name):
        raise AssertionError(f"push_to_hub called HfApi.{name}, which the fake does not expect")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The fake API in place, no token in the environment or saved login, and no socket may connect."""
    FakeApi.calls, FakeApi.fail_with = [], None
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    monkeypatch.delenv("HF_TOKEN", raising=False)

    def no_network(*a, **k):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg = LlamaConfig.from_dict(SMALL)
    model = llama_ft.random_model(cfg, "classification")
    return llama_ft.save_pretrained(
        model, tmp_path_factory.mktemp("push") / "sst2", metrics={"accuracy": 0.875},
        card={"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "datasets": ["stanfordnlp/sst2"],
              "repo_id": "me/smollm2-sst2", "command": "python train_sst2.py --push-to-hub me/smollm2-sst2"})


def assert_token_nowhere(capsys, caplog, *texts):
    out = capsys.readouterr()
    for text in (out.out, out.err, caplog.text, *texts):
        assert TOKEN not in text


def test_push_uploads_the_export_in_one_commit(exported, capsys, caplog):
    caplog.set_level("DEBUG")
    url = llama_ft.push_to_hub(exported, "me/smollm2-sst2", private=True, token=TOKEN)
    assert url == "https://huggingface.co/me/smollm2-sst2"
    names = [c[0] for c in FakeApi.calls]
    assert names == ["HfApi", "create_repo", "upload_folder"]  # one commit, nothing else
    init, create, upload = (c[1] for c in FakeApi.calls)
    assert init == {"token": TOKEN}
    assert create == {"repo_id": "me/smollm2-sst2", "repo_type": "model", "private": True, "exist_ok": True}
    assert upload["repo_id"] == "me/smollm2-sst2" and upload["repo_type"] == "model"
    assert upload["folder_path"] == exported and "commit_message" in upload
    assert set(upload["files"]) == {"config.json", "model.safetensors", "README.md"}
    assert ModelCard(upload["files"]["README.md"].decode()).data.eval_results[0].metric_value == 0.875
    assert_token_nowhere(capsys, caplog, url, upload["commit_message"],
                         *(b.decode("latin-1") for b in upload["files"].values()))


def test_token_from_hf_token_then_the_saved_login(exported, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    llama_ft.push_to_hub(exported, "me/a", commit_message="first")
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(hub, "get_token", lambda: "hf_saved_login")
    llama_ft.push_to_hub(exported, "me/a")
    tokens = [c[1]["token"] for c in FakeApi.calls if c[0] == "HfApi"]
    assert tokens == ["hf_from_env", "hf_saved_login"]
    assert [c[1]["private"] for c in FakeApi.calls if c[0] == "create_repo"] == [False, False]
    assert next(c[1]["commit_message"] for c in FakeApi.calls if c[0] == "upload_folder") == "first"


def test_missing_token_says_how_to_log_in(exported):
    with pytest.raises(HubError, match=r"huggingface-cli login.*HF_TOKEN"):
        llama_ft.push_to_hub(exported, "me/a")
    assert FakeApi.calls == []


@pytest.mark.parametrize("repo_id", ["smollm2-sst2", "me/a/b", "/name", "me/", "me/bad--name",
                                     "me/with space", "-me/x", "me/x.", "me/" + "n" * 97, None])
def test_repo_id_must_be_owner_slash_name(exported, repo_id, capsys, caplog):
    with pytest.raises(HubError, match="owner/name") as e:
        llama_ft.push_to_hub(exported, repo_id, token=TOKEN)
    assert FakeApi.calls == []
    assert_token_nowhere(capsys, caplog, str(e.value))


def test_refuses_a_folder_that_is_not_a_complete_export(exported, tmp_path):
    (tmp_path / "model.safetensors").write_bytes((exported / "model.safetensors").read_bytes())
    with pytest.raises(HubError, match="no config.json"):
        llama_ft.push_to_hub(tmp_path, "me/a", token=TOKEN)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "config.json").write_text((exported / "config.json").read_text())
    with pytest.raises(HubError, match="weights are incomplete"):
        llama_ft.push_to_hub(tmp_path, "me/a", token=TOKEN)
    assert FakeApi.calls == []


@pytest.mark.parametrize("status, words", [(401, "rejected the token"), (403, "may not write")])
def test_hub_refusals_become_clear_errors_without_the_token(exported, status, words, capsys, caplog):
    class Refused(HfHubHTTPError):
        def __init__(self):
            Exception.__init__(self, f"{status} Client Error")
            self.response = SimpleNamespace(status_code=status)

    FakeApi.fail_with = Refused()
    with pytest.raises(HubError, match=words) as e:
        llama_ft.push_to_hub(exported, "someone-else/model", token=TOKEN)
    assert "upload_folder" not in [c[0] for c in FakeApi.calls]
    assert_token_nowhere(capsys, caplog, str(e.value))

