"""llama_ft: fine-tune Llama-family decoders for classification and extractive QA, in plain PyTorch."""
from .config import PRESETS, ConfigError, LlamaConfig
from .export import save_pretrained
from .generate import generate
from .loading import build_model, from_pretrained, random_model
from .model import (
    KVCache,
    LlamaForCausalLM,
    LlamaForQuestionAnswering,
    LlamaForSequenceClassification,
    LlamaModel,
)
from .weights import WeightsError


def resolve(src, **kwargs):
    """A local Hugging Face folder for any model source (folder, .gguf, embedded name, Hub id)."""
    from .sources import resolve as _resolve
    return _resolve(src, **kwargs)

__version__ = "0.1.0"


def count_parameters(model, dtype=None) -> dict:
    """{"total", "trainable", "frozen", "by_module", "bytes"}; a tied weight is counted once."""
    from .audit import count_parameters as _count
    return _count(model, dtype)


def load_tokenizer(src, **kwargs):
    """The tokenizer of a model source (folder, .gguf, preset/embedded name, Hub id)."""
    from .tokenizer import load_tokenizer as _load
    return _load(src, **kwargs)


def push_to_hub(directory, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Upload an exported folder to the Hub repo `repo_id` in one commit; its URL (see llama_ft.hub)."""
    from .hub import push_to_hub as _push
    return _push(directory, repo_id, private=private, token=token, commit_message=commit_message)


__all__ = [
    "LlamaConfig", "ConfigError", "PRESETS", "WeightsError", "KVCache",
    "LlamaModel", "LlamaForCausalLM", "LlamaForSequenceClassification", "LlamaForQuestionAnswering",
    "from_pretrained", "build_model", "random_model", "save_pretrained", "push_to_hub", "count_parameters",
    "load_tokenizer", "resolve", "generate", "__version__",
]
