"""The tiny Llama every engine, export and loading test builds: one config, random weights, random data.

Also a training worker: `python tests/tiny.py '<json>'` trains the tiny model and writes the result as JSON; the
engine's SIGKILL/resume and two-process tests start it as a subprocess (run_worker).
"""
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

import llama_ft
from llama_ft import LlamaConfig, LlamaForQuestionAnswering, LlamaForSequenceClassification, save_pretrained
from llama_ft.tasks.squad.windows import pair_tokenizer
from llama_ft.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]

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


def export_qa(base_dir, folder, qa_format: str, card: dict | None = None) -> Path:
    """A QA export of the model in `base_dir` (random head weights large enough to matter) in `qa_format`, as
    train_squad.py writes one: config.json's qa_format, and for `pair` the tokenizer that builds the pair."""
    model = llama_ft.from_pretrained(base_dir, task="qa", seed=0)
    with torch.no_grad():
        for head in model.head_modules():
            head.weight.normal_(0, 0.5)
    model.config.extra["qa_format"] = qa_format
    tok = llama_ft.load_tokenizer(base_dir)
    return llama_ft.save_pretrained(model, folder, dtype="float32", card=card,
                                    tokenizer=pair_tokenizer(tok) if qa_format == "pair" else tok)


def train_config(**kw) -> TrainConfig:
    """A few seconds of training on the tiny model: fp32, no progress bar, lr high enough to move in 2 epochs."""
    return TrainConfig(**{"epochs": 2, "batch_size": 8, "lr": 1e-3, "amp": "none", "progress": False, "seed": 3,
                          **kw})


def worker(args: dict) -> None:
    """Train the tiny model as `args` says ({"task", "cfg", "out", "n", "slow", "export"}) and write
    losses/weights to out (and, with `export`, the model as a transformers folder there)."""
    torch.set_num_threads(1)
    if args.get("slow"):
        # Slow the run down so the test can kill it mid-epoch, after a checkpoint.
        from llama_ft.train import loop
        inner = loop.train_step

        def slow_step(*a, **k):
            time.sleep(args["slow"])
            return inner(*a, **k)
        loop.train_step = slow_step
    model = tiny_model(args["task"])
    cfg = train_config(**args["cfg"])
    r = train(model, dataset(args["task"], args.get("n", 48)), cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        if args.get("export"):
            save_pretrained(model, args["export"], dtype=torch.float32)
        Path(args["out"]).write_text(json.dumps({"losses": r.losses, "resumed_from": r.resumed_from,
                                                 "compile": r.compile,
                                                 "score": model.score.weight.tolist()
                                                 if args["task"] == "classification" else None}))


def run_worker(args: dict, env: dict | None = None, wait: bool = True) -> subprocess.Popen:
    """`worker(args)` in a subprocess (waited for, and required to succeed, unless wait=False)."""
    p = subprocess.Popen([sys.executable, __file__, json.dumps(args)], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    if wait:
        assert p.wait(timeout=120) == 0
    return p


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
