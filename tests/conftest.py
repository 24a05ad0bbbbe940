"""Shared fixtures. Data lives in ../shared beside the checkout; tests fail (never skip) when it is absent.

A probe patched into code that runs compiled (a block's forward or backward) must not append to a Python list:
dynamo guards on the list's length and recompiles at every call (BENCHMARKS.md, session 40), and in a backward
the append breaks the graph. Count with a tensor (`hits.add_(1)` is part of the graph), or record at trace
time with `torch._dynamo.comptime.comptime`, whose function may use module globals but no closure."""
from pathlib import Path
from types import MappingProxyType

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The read-only ../shared folder (data, seed report)."""
    if not (SHARED / "data").is_dir():
        pytest.fail(f"{SHARED}/data is missing: clone llama_ft next to the project's shared/ folder.")
    return SHARED


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct GGUF converted to a Hugging Face folder (once; kept in the
    llama_ft cache, $LLAMA_FT_CACHE or ~/.cache/llama_ft, for later sessions)."""
    from llama_ft.sources.resolve import SourceError, resolve
    try:
        return resolve("smollm2-135m")
    except SourceError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A tiny random Llama (2 layers, hidden 32) with the real SmolLM2 tokenizer and vocabulary, saved as a
    Hugging Face folder: recipes run end to end on it in seconds."""
    import llama_ft
    folder = tmp_path_factory.mktemp("tiny-smollm2")
    cfg = llama_ft.LlamaConfig.from_dict(dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=49152, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        max_position_embeddings=2048, _name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct"))
    model = llama_ft.random_model(cfg, "causal-lm", seed=0)
    llama_ft.save_pretrained(model, folder, dtype="float32", tokenizer=llama_ft.load_tokenizer(smollm2_dir),
                             overwrite=True)
    return folder


@pytest.fixture(autouse=True)
def fresh_inference_compile_state(monkeypatch):
    """Every test starts as a fresh process: no blocks compiled for an inference pass before (llama_ft.train.compile
    weighs a shorter warm-up after one), whichever tests ran before it."""
    from llama_ft.train import compile as compile_mod
    monkeypatch.setattr(compile_mod, "_compiled_for_inference", False)


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny matrices: on a shared 2-core machine two spinning OpenMP threads run
    several times slower (use with pytest.mark.usefixtures or from a folder's autouse fixture)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def pretend_cpu(monkeypatch):
    """pretend_cpu(amx_bf16=True, ...): torch.cpu.get_capabilities as on this CPU with those flags set, for the rules
    that read it (llama_ft.hardware: the autocast dtype, the compile thresholds)."""
    def pretend(**flags: bool) -> None:
        caps = dict(torch.cpu.get_capabilities(), **flags)
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: MappingProxyType(caps))
    return pretend
