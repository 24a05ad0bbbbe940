"""AdamW groups and schedules (llama_ft/train/optim.py)."""
import pytest
import torch
from tiny import dataset, tiny_model, train_config

from llama_ft.model.policies import apply_policy
from llama_ft.train import train
from llama_ft.train.optim import build_optimizer, lr_factor


def test_schedules():
    assert [lr_factor(s, 10, 2, "linear") for s in (0, 1, 2, 6, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    assert lr_factor(2, 10, 2, "cosine") == 1.0 and abs(lr_factor(6, 10, 2, "cosine") - 0.5) < 1e-12
    r = train(tiny_model(), dataset(n=32), train_config(policy="head", epochs=1, warmup_ratio=0.5, schedule="cosine"))
    assert r.lrs[0] == 0.0 and max(r.lrs) == pytest.approx(1e-3)


def test_weight_decay_groups():
    model = tiny_model()
    apply_policy(model, "lora:4")
    opt = build_optimizer(model, 1e-3, 0.1, torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] for p in g["params"]}
    assert decayed == {"score.weight"}
