"""llama_ft: fine-tune Llama-family decoders for classification and extractive QA, in plain PyTorch.

Layers, each importing only those below it: `metrics/`, `tokenizer`, `files`; `model/` (config, decoder, LoRA,
policies); `hf/` (sources, GGUF, safetensors, loading, export, model cards, Hub); `train/` (the engine);
`tasks/` (SST-2, SQuAD); `cli/`, `pipeline` (text in, predictions out) and the recipes on top.
"""
from llama_ft.heap import bound_onednn_cache
from llama_ft.hf.adapters import AdapterError, load_adapter, save_adapter
from llama_ft.hf.export import save_pretrained
from llama_ft.hf.hub import push_to_hub
from llama_ft.hf.loading import build_model, from_pretrained, load_tokenizer, random_model
from llama_ft.hf.weights import WeightsError
from llama_ft.model.config import PRESETS, ConfigError, LlamaConfig
from llama_ft.model.generate import generate
from llama_ft.model.llama import (
    KVCache,
    LlamaForCausalLM,
    LlamaForQuestionAnswering,
    LlamaForSequenceClassification,
    LlamaModel,
)
from llama_ft.model.params import count_parameters
from llama_ft.pipeline import PipelineError, pipeline
from llama_ft.sources.resolve import resolve

__version__ = "0.1.0"

bound_onednn_cache()  # before anything runs a matrix multiply: oneDNN reads the setting once (llama_ft/heap.py)

__all__ = [
    "LlamaConfig", "ConfigError", "PRESETS", "WeightsError", "KVCache",
    "LlamaModel", "LlamaForCausalLM", "LlamaForSequenceClassification", "LlamaForQuestionAnswering",
    "from_pretrained", "build_model", "random_model", "save_pretrained", "push_to_hub", "count_parameters",
    "load_tokenizer", "resolve", "generate", "save_adapter", "load_adapter", "AdapterError",
    "pipeline", "PipelineError", "__version__",
]
