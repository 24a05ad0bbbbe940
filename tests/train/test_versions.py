"""Several versions of the trainable weights over one pass of the frozen bottom (llama_ft/train/versions.py):
the same outputs as a whole predict pass under each version, the model's own weights kept, refusals."""
import pytest
import torch
from tiny import dataset, tiny_model, train_config

from llama_ft.train import apply_training_policy, predict, predict_versions, train
from llama_ft.train.checkpoint import load_trainable, trainable_state
from llama_ft.train.trunk import TrunkCache, find_split
from llama_ft.train.versions import shares_bottom


def trained_with_start(task: str, policy: str, amp: str):
    """(a model trained one epoch under `policy`, its trainable weights as they started, the data)."""
    data = dataset(task, 40)
    model, cfg = tiny_model(task), train_config(policy=policy, amp=amp, epochs=1)
    apply_training_policy(model, cfg)
    start = trainable_state(model)
    train(model, data, cfg)
    return model, start, data


def assert_same_outputs(a, b, tol):
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    else:
        for (s1, e1), (s2, e2) in zip(a, b, strict=True):
            torch.testing.assert_close(s1, s2, rtol=tol, atol=tol)
            torch.testing.assert_close(e1, e2, rtol=tol, atol=tol)


@pytest.mark.parametrize("task", ["classification", "qa"])
@pytest.mark.parametrize("policy,shared", [("last:2", True), ("head", True), ("lora:4:last:1", True),
                                           ("full", False)])
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_versions_equal_whole_passes_under_each_weights(task, policy, shared, amp):
    model, start, data = trained_with_start(task, policy, amp)
    trained = trainable_state(model)
    scores = predict_versions(model, data, [None, start], batch_size=8, amp=amp, compile=False)
    assert scores.shared is shared and (scores.trunk_seconds > 0) is shared
    assert len(scores.seconds) == 2
    torch.testing.assert_close(trainable_state(model), trained, rtol=0, atol=0)  # its own weights, kept
    after = predict(model, data, batch_size=8, amp=amp, compile=False)
    load_trainable(model, start, "start")
    before = predict(model, data, batch_size=8, amp=amp, compile=False)
    # fp32: the same arithmetic; bf16: a batch's padded width rounds the same, so the same to bf16 rounding
    tol = 1e-5 if amp == "none" else 2e-2
    assert_same_outputs(scores.outputs[0], after, tol)
    assert_same_outputs(scores.outputs[1], before, tol)
    # and the two versions differ: the pass did not score one weight set twice
    first = scores.outputs[0] if task == "classification" else scores.outputs[0][0][0]
    second = scores.outputs[1] if task == "classification" else scores.outputs[1][0][0]
    assert not torch.allclose(first, second)


def test_one_version_is_a_plain_predict_pass():
    model, _, data = trained_with_start("classification", "last:2", "none")
    scores = predict_versions(model, data, [None], batch_size=8, amp="none", compile=False)
    assert not scores.shared and scores.trunk_seconds == 0
    torch.testing.assert_close(scores.outputs[0], predict(model, data, batch_size=8, amp="none", compile=False))


def test_shares_bottom_follows_the_policy():
    for policy, shares in [("last:2", True), ("head", True), ("lora:4:last:1", True), ("lora:4", False),
                           ("full", False)]:
        model = tiny_model()
        apply_training_policy(model, train_config(policy=policy))
        assert shares_bottom(model) is shares, policy


def test_a_version_of_other_parameters_is_refused_and_the_weights_are_kept():
    model, start, data = trained_with_start("classification", "last:2", "none")
    trained = trainable_state(model)
    other = tiny_model()
    apply_training_policy(other, train_config(policy="last:1"))
    with pytest.raises(ValueError, match=r"versions\[1\] names .*trainable_state"):
        predict_versions(model, data, [None, trainable_state(other)], amp="none", compile=False)
    wrong = {k: v[..., :1] if v.ndim else v for k, v in start.items()}
    with pytest.raises(ValueError, match=r"versions\[0\]\[.*has shape"):
        predict_versions(model, data, [wrong], amp="none", compile=False)
    torch.testing.assert_close(trainable_state(model), trained, rtol=0, atol=0)


def test_predict_refuses_a_trunk_cache_of_other_data_or_another_policy():
    model, _, data = trained_with_start("classification", "last:2", "none")
    split = find_split(model)
    cache = TrunkCache(model, split, data[:10], __import__("numpy").array([len(d["input_ids"]) for d in data[:10]]),
                       batch_size=4, device=torch.device("cpu"), amp_dtype=None, dtype=torch.float32,
                       ram_bytes=float("inf"), tmp_dir=None)
    with pytest.raises(ValueError, match="build the TrunkCache from this dataset"):
        predict(model, data, amp="none", compile=False, trunk=cache)
    for p in model.backbone.layers[1].parameters():
        p.requires_grad_(True)  # the policy now trains from layer 1
    with pytest.raises(ValueError, match="build the TrunkCache after applying the policy"):
        predict(model, data[:10], amp="none", compile=False, trunk=cache)
    cache.close()
    with pytest.raises(ValueError, match="closed TrunkCache"):
        predict(model, data[:10], amp="none", compile=False, trunk=cache)
