"""Runs gone wrong (llama_ft/train/divergence.py): NaN/inf and divergence stop with the last good checkpoint."""
import json

import pytest
import torch
from tiny import dataset, tiny_model, train_config

from llama_ft.train import NonFiniteError, train


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
