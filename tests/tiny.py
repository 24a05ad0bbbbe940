"""The tiny Llama every engine, export and loading test builds: one config, random weights, random data."""
import random

import torch

from llama_ft import LlamaConfig, LlamaForQuestionAnswering, LlamaForSequenceClassification

TINY = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 101, "max_position_embeddings": 256, "bos_token_id": 1,
        "eos_token_id": 2, "pad_token_id": 0}


def tiny_config(**overrides) -> LlamaConfig:
    return LlamaConfig.from_dict({**TINY, **overrides})


def tiny_model(task="classification", seed=0, **overrides):
    # Built directly on CPU (random_model's meta-device path imports torch._dynamo: seconds per subprocess).
    torch.manual_seed(seed)
    cfg = tiny_config(**overrides)
    return LlamaForSequenceClassification(cfg, 2) if task == "classification" else LlamaForQuestionAnswering(cfg)


def dataset(task="classification", n=96, seed=0, max_len=30):
    """Random token sequences with learnable targets: parity of the token sum, or a random span."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [r.randrange(3, 101) for _ in range(r.randrange(3, max_len))]
        if task == "classification":
            out.append({"input_ids": ids, "label": int(sum(ids) % 2)})
        else:
            s = r.randrange(len(ids))
            out.append({"input_ids": ids, "start_positions": s, "end_positions": r.randrange(s, len(ids))})
    return out
