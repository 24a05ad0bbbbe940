"""Checkpoints and resume (llama_ft/train/checkpoint.py): SIGKILL then resume, this run's figures and best."""
import contextlib
import json
import os
import pickle
import signal
import time

import pytest
import safetensors
import torch
from tiny import dataset, run_worker, tiny_model, train_config

from llama_ft.train import train
from llama_ft.train.checkpoint import from_json_and_tensors, rng_state, to_json_and_tensors


def test_resume_restores_this_runs_figures_not_an_older_runs_best(tmp_path):
    """A best/ left in the folder by an earlier run with select_metric is not loaded into a resumed run that
    selects nothing; the resumed result keeps the timing of the steps before the checkpoint (tokens/s)."""
    data = dataset(n=32)
    train(tiny_model(), data, train_config(policy="head", epochs=1, select_metric="fake", output_dir=str(tmp_path)),
          eval_fn=lambda m: {"fake": 1.0})
    assert (tmp_path / "best" / "model.safetensors").is_file()
    model = tiny_model(seed=1)
    first = train(model, data, train_config(policy="head", lr=5e-2, output_dir=str(tmp_path)))
    weights = model.score.weight.detach().clone()
    (tmp_path / "train_log.jsonl").open("a").write('{"step": 9, "loss": 0.')  # a line torn by a crash
    again = tiny_model(seed=1)
    resumed = train(again, data, train_config(policy="head", lr=5e-2, output_dir=str(tmp_path), resume=True))
    assert resumed.resumed_from == first.steps and resumed.best_step is None
    torch.testing.assert_close(again.score.weight, weights, rtol=0, atol=0)
    assert resumed.train_seconds == first.train_seconds and resumed.tokens_per_second == first.tokens_per_second
    steps = [json.loads(x)["step"] for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, first.steps + 1))
    with pytest.raises(ValueError, match="amp='none'.*amp='bf16'"):
        train(tiny_model(seed=1), data, train_config(policy="head", lr=5e-2, amp="bf16", output_dir=str(tmp_path),
                                              resume=True))


def test_resume_with_a_best_written_after_the_checkpoint_chooses_again(tmp_path):
    """Killed between writing best/ and the checkpoint: best/ is newer than the checkpoint's best step, so it is
    not loaded; the best is chosen again from the evaluations after the resume."""
    from safetensors.torch import load_file, save_file
    data = dataset(n=32)
    cfg = train_config(policy="head", epochs=1, eval_every=1, select_metric="fake", output_dir=str(tmp_path))
    scores = iter([3.0, 5.0, 1.0, 2.0])
    first = train(tiny_model(), data, cfg, eval_fn=lambda m: {"fake": next(scores)})
    assert first.best_step == 2
    best = tmp_path / "best" / "model.safetensors"
    save_file(load_file(str(best)), str(best), metadata={"step": "3", "fake": "9.0"})
    model = tiny_model()
    with pytest.warns(UserWarning, match="not at the checkpoint's best step 2"):
        resumed = train(model, data, train_config(policy="head", epochs=1, eval_every=1, select_metric="fake",
                                           output_dir=str(tmp_path), resume=True), eval_fn=lambda m: {"fake": 0.0})
    assert resumed.resumed_from == first.steps and resumed.best_step is None


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    cfg = {"policy": "last:2", "epochs": 3, "batch_size": 4, "checkpoint_every": 2, "trunk_cache": True}
    full_out, part_out = tmp_path / "full.json", tmp_path / "part.json"
    run_dir = tmp_path / "run"
    p = run_worker({"task": "classification", "cfg": dict(cfg, output_dir=str(tmp_path / "ref")),
                    "out": str(full_out)}, wait=False)
    k = run_worker({"task": "classification", "slow": 0.15, "out": str(part_out),
                    "cfg": dict(cfg, output_dir=str(run_dir))}, wait=False)
    # 12 steps per epoch: kill in epoch 2, once the checkpoint of step 14 is on disk.
    deadline = time.time() + 90
    while time.time() < deadline:
        # The safetensors metadata names the step; a file caught mid-rename just means poll again.
        st = run_dir / "checkpoint" / "model.safetensors"
        with contextlib.suppress(OSError, safetensors.SafetensorError):
            if int(safetensors.safe_open(str(st), "pt").metadata()["step"]) >= 14:
                break
        time.sleep(0.05)
    assert k.poll() is None, "the run finished before it could be killed"
    os.kill(k.pid, signal.SIGKILL)
    k.wait()
    assert not part_out.exists()
    assert p.wait(timeout=120) == 0
    run_worker({"task": "classification", "out": str(part_out), "cfg": dict(cfg, output_dir=str(run_dir),
                                                                           resume=True)})
    full, part = json.loads(full_out.read_text()), json.loads(part_out.read_text())
    assert part["resumed_from"] >= 14 and part["resumed_from"] % 2 == 0
    assert part["losses"] == full["losses"] and len(full["losses"]) == 36
    assert part["score"] == full["score"]


class _Plant:
    """A pickle whose loading would create `marker`: what a crafted state.pt could do to whoever resumes it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_is_never_executed_and_the_error_names_it(tmp_path):
    data = dataset(n=16)
    train(tiny_model(), data, train_config(policy="head", epochs=1, output_dir=str(tmp_path)))
    marker, planted = tmp_path / "pwned", tmp_path / "checkpoint" / "state.pt"
    torch.save({"step": _Plant(marker)}, planted)
    with pytest.raises(ValueError, match=f"{planted}.*--overwrite"):
        train(tiny_model(), data, train_config(policy="head", epochs=1, output_dir=str(tmp_path), resume=True))
    assert not marker.exists()
    torch.load(planted, weights_only=False)  # the plant works: loading it the old way runs it
    assert marker.exists()


def test_resume_loads_no_pickle_and_continues_exactly(tmp_path, monkeypatch):
    """The whole load path (weights, optimizer, scheduler, scaler, RNG, history) is safetensors and JSON, and a
    run stopped after its checkpoint of step 2 resumes to the losses and weights of an uninterrupted run."""
    data = dataset(n=32)
    cfg = dict(policy="last:1", epochs=2, checkpoint_every=1, output_dir=str(tmp_path / "run"))
    model = tiny_model()
    full = train(model, data, train_config(**dict(cfg, output_dir=str(tmp_path / "full"))))

    def stop_at_step_3(m):
        if len(calls := stop_at_step_3.calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return {}
    stop_at_step_3.calls = []
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(), data, train_config(**cfg, eval_every=1), eval_fn=stop_at_step_3)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoint").iterdir()) == [
        "model.safetensors", "state.json", "state.safetensors"]

    def refuse(*a, **k):
        raise AssertionError("unpickling on the resume path")
    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    again = tiny_model()
    resumed = train(again, data, train_config(**cfg, resume=True))
    assert resumed.resumed_from == 2 and resumed.losses == full.losses
    for (n, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=n)


def test_state_round_trips_through_safetensors_and_json():
    """Optimizer state (int keys, tuples, 0-d tensors), RNG states and python's random state come back equal."""
    import random
    model = tiny_model()
    from llama_ft.model.policies import apply_policy
    apply_policy(model, "last:1")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], betas=(0.9, 0.95))
    model(torch.tensor([[5, 6, 7]])).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": rng_state(), "losses": [0.5, float("inf")], "best": None}
    tensors = {}
    back = from_json_and_tensors(json.loads(json.dumps(to_json_and_tensors(state, tensors))), tensors, "x")
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert back["optimizer"]["state"].keys() == opt.state_dict()["state"].keys()
    for i, s in opt.state_dict()["state"].items():
        for k, v in s.items():
            torch.testing.assert_close(back["optimizer"]["state"][i][k], v, rtol=0, atol=0)
    assert back["rng"]["python"] == random.getstate() and torch.equal(back["rng"]["torch"], torch.get_rng_state())
    assert back["losses"] == [0.5, float("inf")] and back["best"] is None
    opt.load_state_dict(back["optimizer"])
    with pytest.raises(TypeError, match="state.x is a object"):
        to_json_and_tensors({"x": object()}, {})


def test_changed_settings_are_refused_naming_each_one(tmp_path):
    """Every setting that changes the math, as resolved (frozen_dtype `auto` is fp32 under amp='none', the same)."""
    data = dataset(n=32)
    base = dict(policy="head", epochs=1, output_dir=str(tmp_path))
    train(tiny_model(), data, train_config(**base))
    with pytest.raises(ValueError, match=r"TrainConfig differs: lr=0\.001 -> lr=0\.01, policy='head' -> "
                                         r"policy='last:1', weight_decay=0\.01 -> weight_decay=0\.0\."):
        train(tiny_model(), data, train_config(**dict(base, lr=1e-2, policy="last:1", weight_decay=0.0),
                                               resume=True))
    for field, value in [("schedule", "cosine"), ("warmup_ratio", 0.1), ("batch_size", 4), ("global_batch", 16),
                         ("epochs", 3), ("max_steps", 2), ("max_grad_norm", None), ("amp", "bf16"), ("seed", 4),
                         ("length_grouping", False), ("grad_checkpointing", True),
                         ("trunk_cache", False), ("select_metric", "eval_loss")]:
        with pytest.raises(ValueError, match=f"{field}=.* -> {field}="):
            train(tiny_model(), data, train_config(**dict(base, **{field: value}), resume=True))


def test_changed_data_is_refused_and_safe_settings_are_not(tmp_path):
    data = dataset(n=32)
    base = dict(policy="head", epochs=1, output_dir=str(tmp_path))
    first = train(tiny_model(), data, train_config(**base, checkpoint_every=2))
    other = [dict(ex, label=1 - ex["label"]) if i == 5 else ex for i, ex in enumerate(data)]
    for changed in (other, data[:-1]):
        with pytest.raises(ValueError, match=r"the training data differs: 32 examples .* -> \d+ examples") as e:
            train(tiny_model(), changed, train_config(**base, resume=True))
        assert "TrainConfig differs" not in str(e.value)
    safe = dict(progress=True, log_every=1, device="cpu", eval_every=1, checkpoint_every=1,
                trunk_cache_ram_gib=0.5, peak_flops=None, divergence_factor=100.0)
    again = train(tiny_model(), data, train_config(**base, **safe, resume=True))
    assert again.resumed_from == first.steps
