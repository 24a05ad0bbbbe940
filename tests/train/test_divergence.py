"""Runs gone wrong (llama_ft/train/divergence.py): NaN/inf and divergence stop with the last good checkpoint."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny import dataset, tiny_model, train_config

from llama_ft.train import DivergenceError, NonFiniteError, TrainingError, train
from llama_ft.train.divergence import DivergenceGuard, chance_loss


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    model = tiny_model()

    def poison(m):
        with torch.no_grad():
            m.score.weight.fill_(float("nan"))
        return {}

    with pytest.raises(NonFiniteError, match="Last good checkpoint: .*checkpoint"):
        train(model, dataset(n=32), train_config(policy="head", eval_every=2, checkpoint_every=1,
                                          output_dir=str(tmp_path)), eval_fn=poison)
    last = json.loads((tmp_path / "train_log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and "non_finite" in last
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2


def test_a_huge_lr_stops_with_divergence_naming_the_last_good_checkpoint(tmp_path):
    """lr 1e9 after a first step at lr 0 (warm-up): the update of step 2 blows the weights up; the run stops
    there, the checkpoint of step 1 is named and holds the sane weights, nothing later is written."""
    model = tiny_model()
    start = model.score.weight.detach().clone()
    with pytest.raises(DivergenceError, match=r"step 2: after its update, the loss .* is over 10x .*Last good "
                                              rf"checkpoint: {tmp_path / 'checkpoint'} \(step 1\)"):
        train(model, dataset(n=32), train_config(policy="head", lr=1e9, epochs=1, warmup_ratio=0.5,
                                                  checkpoint_every=1, output_dir=str(tmp_path)))
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 1
    torch.testing.assert_close(load_file(str(tmp_path / "checkpoint" / "model.safetensors"))["score.weight"], start)
    last = json.loads((tmp_path / "train_log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 2 and "diverged" in last


def test_divergence_without_checkpoints_says_none_and_is_a_training_error():
    with pytest.raises(TrainingError, match=r"step 2: the loss .* Last good checkpoint: none") as e:
        train(tiny_model(), dataset(n=32), train_config(policy="head", lr=1e9, epochs=1))
    assert isinstance(e.value, DivergenceError)


def test_the_guard_thresholds():
    g = DivergenceGuard(10.0, chance=math.log(2))
    assert g.diverged(50.0) is None  # the first loss is the starting level, not judged
    for loss in [0.7, 0.3, 0.1, 0.05, 0.05, 0.05]:
        g.record(loss, 1.0)
    assert g.diverged(0.6) is None  # a hard batch 10x the running mean, still near chance
    assert g.diverged(6.0) is None and "over 10x" in g.diverged(7.5)
    assert "nan" in g.diverged(float("nan"))
    assert g.diverged(0.1, grad_norm=99.0) is None and "gradient norm" in g.diverged(0.1, grad_norm=101.0)
    g.record(0.1, float("inf"))  # an fp16 overflow, skipped by the scaler: not part of the reference
    assert g.grad_n == 6
    resumed = DivergenceGuard(10.0, math.log(2), [0.7, 0.3, 0.1, 0.05, 0.05, 0.05, 0.1], [1.0] * 6 + [math.inf])
    assert (resumed.start, resumed.loss_n, resumed.grad_n) == (0.7, 7, 6)
    assert DivergenceGuard(None, 0.7, [0.7]).diverged(1e30) is None


def test_chance_loss():
    assert chance_loss("classification", np.array([5, 9]), 3) == pytest.approx(math.log(3))
    assert chance_loss("qa", np.array([4, 16])) == pytest.approx((math.log(4) + math.log(16)) / 2)
