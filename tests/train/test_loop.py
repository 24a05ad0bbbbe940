"""The training loop (llama_ft/train/loop.py): the frozen fast path, train_step around it, AMP, evaluation,
selection, the step log, predict."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import dataset, tiny_model, train_config

from llama_ft.model.flops import training_flops
from llama_ft.model.policies import apply_policy
from llama_ft.train import predict, prepare_for_training, train
from llama_ft.train.batching import collate, example_lengths
from llama_ft.train.config import resolve_amp
from llama_ft.train.loop import TaskLoss, eval_loss, task_loss
from llama_ft.train.trunk import find_split


@pytest.mark.parametrize("task", ["classification", "qa"])
@pytest.mark.parametrize("policy", ["head", "last:2", "lora:4"])
def test_fast_path_equals_full_backward(task, policy):
    """Frozen bottom under no_grad + trainable top gives the loss and gradients of a plain forward/backward."""
    model = tiny_model(task)
    apply_policy(model, policy)
    b = collate(dataset(task, 6), 0)
    targets = {k: b[k] for k in ("label", "start_positions", "end_positions") if k in b}
    loss_fast = TaskLoss(model, find_split(model), torch.float32)(b["input_ids"], b["attention_mask"], **targets)
    loss_fast.backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss_ref = task_loss(task, model(b["input_ids"], b["attention_mask"]), b["attention_mask"], **targets)
    loss_ref.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert fast.keys() == ref.keys() == {n for n, p in model.named_parameters() if p.requires_grad}
    torch.testing.assert_close(loss_fast, loss_ref, rtol=1e-6, atol=1e-6)
    for n, g in ref.items():
        torch.testing.assert_close(fast[n], g, rtol=1e-5, atol=1e-6)


def test_frozen_blocks_build_no_graph_and_keep_no_grads():
    model = tiny_model()
    seen = {}

    def record(i, out):
        # Built a graph in any forward (the check of the updated weights before a checkpoint runs without one).
        seen[i] = seen.get(i, False) or out.requires_grad

    for i, layer in enumerate(model.model.layers):
        layer.register_forward_hook(lambda m, a, out, i=i: record(i, out))
    train(model, dataset(n=16), train_config(policy="last:1", epochs=1, trunk_cache=False))
    assert seen == {0: False, 1: False, 2: False, 3: True}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters()
                         if n.startswith(("model.layers.3.", "model.norm.", "score."))}


@pytest.mark.parametrize("policy", ["last:2", "lora:4", "full"])
def test_gradient_checkpointing_gives_equal_gradients_under_policies(policy):
    grads = []
    for ckpt in (False, True):
        model = tiny_model()
        apply_policy(model, policy) if policy != "lora:4" else (torch.manual_seed(0), apply_policy(model, policy))
        model.model.gradient_checkpointing = ckpt
        model.train()
        b = collate(dataset(n=5), 0)
        TaskLoss(model, find_split(model), torch.float32)(b["input_ids"], b["attention_mask"],
                                                          label=b["label"]).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_and_keep_their_names():
    """TrainConfig(compile=True) on CPU (inductor): the same losses as eager under a frozen bottom with the
    trunk cache, gradient checkpointing and padded batches of changing length; names and state dict unchanged."""
    data = dataset("classification", 32)
    cfg = dict(policy="last:2", epochs=2, batch_size=8, grad_checkpointing=True)
    eager, compiled = tiny_model(), tiny_model()
    r0 = train(eager, data, train_config(**cfg))
    r1 = train(compiled, data, train_config(compile=True, **cfg))
    # The trainable blocks were compiled for the run (the cached frozen bottom never runs in it), then put back
    # to eager for whatever the caller runs next.
    assert r1.compile is not None and r1.compile["at_step"] == 0  # (graphs may come from an earlier test)
    assert all(layer._compiled_call_impl is None for layer in compiled.backbone.layers)
    assert r1.trunk_cache is not None
    np.testing.assert_allclose(r1.losses, r0.losses, rtol=1e-4, atol=1e-5)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for (n0, t0), (_, t1) in zip(eager.state_dict().items(), compiled.state_dict().items(), strict=True):
        torch.testing.assert_close(t1, t0, rtol=1e-3, atol=1e-4, msg=n0)


def test_gradient_accumulation_equals_the_big_batch():
    data = dataset(n=40)
    big = train(tiny_model(), data, train_config(policy="last:2", batch_size=8, trunk_cache=False))
    acc = train(tiny_model(), data, train_config(policy="last:2", batch_size=2, global_batch=8, trunk_cache=False))
    np.testing.assert_allclose(acc.losses, big.losses, rtol=1e-5)


def test_micro_batch_token_cap_splits_long_batches_with_the_same_losses(tmp_path):
    data = dataset(n=40, max_len=30)
    big = train(tiny_model(), data, train_config(policy="last:2", batch_size=8, trunk_cache=False))
    capped = train(tiny_model(), data, train_config(policy="last:2", batch_size=8, micro_batch_tokens=64,
                                                    trunk_cache=False))
    np.testing.assert_allclose(capped.losses, big.losses, rtol=1e-5)
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        train_config(micro_batch_tokens=0)


def test_compiled_steps_take_the_compiled_token_cap_and_eager_steps_the_other(monkeypatch):
    """Compiled blocks keep fewer activations per token, so once `auto` has compiled them a step may run larger
    micro-batches in the same memory; the eager probe steps before keep micro_batch_tokens. The gradient is the
    same either way. (The blocks are not really compiled here: only the cap's switch is under test.)"""
    import llama_ft.train.compile as compile_mod
    import llama_ft.train.loop as loop_mod

    monkeypatch.setattr(compile_mod, "compile_blocks", lambda model, **kw: 0)
    monkeypatch.setitem(compile_mod.AUTO_MIN_SECONDS, "cpu", 0.0)
    caps, split = [], loop_mod.split_batch
    monkeypatch.setattr(loop_mod, "split_batch", lambda *a, **kw: caps.append(kw["max_tokens"]) or split(*a, **kw))
    data = dataset(n=40, max_len=30)
    kw = {"policy": "last:2", "batch_size": 8, "trunk_cache": False, "epochs": 1}
    capped = train(tiny_model(), data, train_config(compile="auto", micro_batch_tokens=64,
                                                    compiled_micro_batch_tokens=10**6, **kw))
    assert capped.compile["at_step"] == 2
    per_step = caps[::2]  # the loop splits each step twice: every rank's pieces, then its own
    assert caps[1::2] == per_step and per_step == [64, 64] + [10**6] * (len(per_step) - 2) and len(per_step) == 5
    big = train(tiny_model(), data, train_config(compile=False, **kw))
    np.testing.assert_allclose(capped.losses, big.losses, rtol=1e-5)
    with pytest.raises(ValueError, match="compiled_micro_batch_tokens"):
        train_config(compiled_micro_batch_tokens=0)


def test_fp16_on_cpu_is_an_error_naming_bf16():
    with pytest.raises(ValueError, match="bf16"):
        resolve_amp("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="bf16"):
        train(tiny_model(), dataset(n=8), train_config(amp="fp16", device="cpu"))


def test_bf16_frozen_weights_fp32_masters():
    model = tiny_model()
    train(model, dataset(n=16), train_config(policy="last:1", amp="bf16", epochs=1))
    for n, p in model.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), n


@pytest.mark.parametrize("policy", ["lora:4", "last:1", "full"])
def test_preparing_before_training_scores_as_before_and_trains_the_same(policy):
    # What a recipe's untrained row does: prepare the model as train() would, score it, then train it.
    data = dataset("qa", 16)
    cfg = train_config(policy=policy, amp="bf16", epochs=1)
    fresh, prepared = tiny_model("qa"), tiny_model("qa")
    untrained = predict(fresh, data, batch_size=8, amp="bf16", compile=False)
    prepare_for_training(prepared, cfg)
    for n, p in prepared.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), n
    # The same model: zero adapters, and bf16 weights where autocast cast them to bf16 at every call.
    for (s1, e1), (s2, e2) in zip(untrained, predict(prepared, data, batch_size=8, amp="bf16", compile=False)):
        torch.testing.assert_close(s2, s1, rtol=0.02, atol=0.02)
        torch.testing.assert_close(e2, e1, rtol=0.02, atol=0.02)
    # train() finds the policy applied and the weights cast: the same adapters' start, the same steps.
    a, b = train(fresh, data, cfg), train(prepared, data, cfg)
    assert a.losses == b.losses
    for (n, p), q in zip(fresh.state_dict().items(), prepared.state_dict().values()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("task", ["classification", "qa"])
def test_predict_in_dataset_order_matches_single_examples(task):
    model = tiny_model(task).eval()
    data = dataset(task, 13)
    out = predict(model, data, batch_size=4, amp="none")
    for i in (0, 5, 12):
        ids = torch.tensor([data[i]["input_ids"]])
        with torch.no_grad():
            one = model(ids, torch.ones_like(ids))
        if task == "classification":
            torch.testing.assert_close(out[i], one[0], rtol=1e-5, atol=1e-5)
        else:
            assert out[i][0].shape == (len(data[i]["input_ids"]),)
            torch.testing.assert_close(out[i][1], one[1][0], rtol=1e-5, atol=1e-5)


def test_best_checkpoint_selected_and_restored(tmp_path):
    model = tiny_model()
    data, held = dataset(n=32), dataset(n=16, seed=1)
    calls = []

    def eval_fn(m):
        calls.append(m.score.weight.detach().clone())
        return {"fake": [3.0, 5.0, 1.0, 2.0][len(calls) - 1]}

    r = train(model, data, train_config(policy="head", epochs=1, eval_every=1, select_metric="fake",
                                 output_dir=str(tmp_path)), eval_set=held, eval_fn=eval_fn)
    assert [m["step"] for m in r.metrics] == [1, 2, 3, 4] and all("eval_loss" in m for m in r.metrics)
    assert r.best_metric == 5.0 and r.best_step == 2
    torch.testing.assert_close(model.score.weight, calls[1])
    assert (tmp_path / "best" / "model.safetensors").is_file()


def test_jsonl_log_and_result(tmp_path):
    r = train(tiny_model(), dataset(n=32), train_config(policy="last:1", output_dir=str(tmp_path)))
    lines = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, r.steps + 1))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "memory", "peak_memory"} <= lines[0].keys()
    assert r.steps == 8 and len(r.losses) == 8 and r.tokens_per_second > 0 and 0 <= r.padding_waste < 0.5
    assert r.real_tokens == 2 * sum(len(x["input_ids"]) for x in dataset(n=32))
    assert 0 < r.trainable_params < r.total_params
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()


@pytest.mark.parametrize("trunk_cache", [False, True])
def test_every_step_line_has_tokens_per_s_and_mfu_of_what_ran(tmp_path, trunk_cache):
    """MFU = the step's model FLOPs (llama_ft.model.flops, real tokens; with the trunk cache only the top runs)
    over its seconds and the peak; the run's FLOPs are those of each example once per epoch."""
    data = dataset(n=32)
    model = tiny_model()
    r = train(model, data, train_config(policy="last:2", trunk_cache=trunk_cache, peak_flops=1e12,
                                        output_dir=str(tmp_path)))
    lines = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    cached = 2 if trunk_cache else 0
    per_epoch = training_flops(model, cached_layers=cached).of_lengths(example_lengths(data))
    assert r.model_flops == pytest.approx(2 * per_epoch)
    assert sum(x["mfu"] * x["seconds"] * 1e12 for x in lines) == pytest.approx(r.model_flops)
    assert all(x["tokens_per_s"] == pytest.approx(x["real_tokens"] / x["seconds"]) for x in lines)
    assert r.mfu == pytest.approx(r.model_flops / r.train_seconds / 1e12) and r.peak_flops == 1e12
    assert (training_flops(model, cached_layers=cached).per_token < training_flops(model).per_token) == trunk_cache


def test_mfu_divides_by_the_faster_probe_of_the_start_and_the_end_of_training(monkeypatch):
    """The first probe runs as training starts, beside whatever starts with it (compile workers, the trunk
    cache's last pages): when it reads low, the run's MFU divides by the probe after training instead."""
    from llama_ft.model import flops
    from llama_ft.train import loop
    readings = iter([1e13, 4e13])  # more than the tiny model's steps reach: no step reads above 100% MFU
    monkeypatch.setattr(flops, "probe_peak", lambda *a, **k: (next(readings), (1, 1, 1)))
    monkeypatch.setattr(flops, "_PROBED", {})
    short = train(tiny_model(), dataset(n=16), train_config(policy="head", epochs=1))
    assert short.peak_flops == 1e13  # a run under REPROBE_MIN_SECONDS keeps its one probe
    monkeypatch.setattr(loop, "REPROBE_MIN_SECONDS", 0.0)  # as a long run
    r = train(tiny_model(), dataset(n=16), train_config(policy="head", epochs=1))
    assert r.peak_flops == 4e13 and r.mfu == pytest.approx(r.model_flops / r.train_seconds / 4e13)


def test_a_step_above_100_percent_mfu_probes_the_peak_again_once(monkeypatch, tmp_path):
    """MFU above 100% proves that the first probe read low: the step log probes once more, between steps, and
    that step, the later ones and the run's MFU divide by the faster probe."""
    from llama_ft.model import flops
    readings, calls = [1.0, 1e15, 1e16], []  # the first absurdly low; a third probe would be a second re-probe

    def probe(*args, **kwargs):
        calls.append(args)
        return readings[len(calls) - 1], (1, 1, 1)
    monkeypatch.setattr(flops, "probe_peak", probe)
    monkeypatch.setattr(flops, "_PROBED", {})
    r = train(tiny_model(), dataset(n=16), train_config(policy="head", epochs=2, output_dir=str(tmp_path)))
    lines = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "mfu" in x]
    assert len(calls) == 2 and len(steps) >= 2 and all(0 < x["mfu"] < 1 for x in steps)
    assert r.peak_flops == 1e15 and r.mfu == pytest.approx(r.model_flops / r.train_seconds / 1e15)


def test_mfu_peak_auto_probes_and_none_logs_no_mfu(tmp_path):
    data = dataset(n=16)
    auto = train(tiny_model(), data, train_config(policy="head", epochs=1, output_dir=str(tmp_path / "a")))
    assert auto.peak_flops > 1e8 and 0 < auto.mfu
    off = train(tiny_model(), data, train_config(policy="head", epochs=1, peak_flops=None,
                                                 output_dir=str(tmp_path / "b")))
    assert off.mfu is None and off.peak_flops is None
    lines = [json.loads(x) for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert all("mfu" not in x and x["tokens_per_s"] > 0 for x in lines)
    with pytest.raises(ValueError, match="TrainConfig.peak_flops"):
        train_config(peak_flops="fast")


@pytest.mark.parametrize("task", ["classification", "qa"])
def test_eval_loss_is_the_training_loss_on_held_out_examples(task):
    """eval_loss (task_loss, masked padding) equals each example's cross-entropy computed alone, unpadded."""
    model = tiny_model(task).eval()
    held = dataset(task, 11, seed=2)
    want = []
    for ex in held:
        with torch.no_grad():
            out = model(torch.tensor([ex["input_ids"]]))
        if task == "classification":
            want.append(F.cross_entropy(out, torch.tensor([ex["label"]])).item())
        else:
            want.append((F.cross_entropy(out[0], torch.tensor([ex["start_positions"]]))
                         + F.cross_entropy(out[1], torch.tensor([ex["end_positions"]]))).item() / 2)
    got = eval_loss(model, held, 4, None, torch.device("cpu"))
    assert got == pytest.approx(sum(want) / len(want), rel=1e-5)
