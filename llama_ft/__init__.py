"""llama_ft: fine-tune Llama-family decoders for classification and extractive QA, in plain PyTorch."""
from .config import PRESETS, ConfigError, LlamaConfig

__version__ = "0.1.0"

__all__ = ["LlamaConfig", "ConfigError", "PRESETS", "__version__"]
