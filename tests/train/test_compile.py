"""TrainConfig.compile: compiled training equals eager training, and `auto` compiles only runs long enough to
repay the warm-up."""
import numpy as np
import pytest
from tiny import dataset, tiny_model

from llama_ft.train import TrainConfig, train
from llama_ft.train.compile import compile_pays, is_compiled




def run(compile, task="qa", **kw):
    model = tiny_model(task)
    base = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "amp": "bf16", "progress": False, "seed": 3,
            "compile": compile}
    base.update(kw)
    return model, train(model, dataset(task, n=40), TrainConfig(**base))


def test_auto_rule():
    assert compile_pays(2.0, 200)          # 400 s of eager steps left: the warm-up pays
    assert not compile_pays(0.05, 100)     # a 5 s run: it never would
    assert compile_pays(1.0, 10, min_seconds=5.0)


def test_auto_leaves_a_short_run_eager():
    model, res = run("auto", epochs=1)
    assert not is_compiled(model) and res.compile is None


@pytest.mark.slow
def test_compiled_training_equals_eager_with_lora_trunk_cache_and_checkpointing():
    """LoRA on the top blocks over a cached frozen bottom, recomputed in backward: same losses as eager."""
    kw = {"policy": "lora:4:last:2", "grad_checkpointing": True, "trunk_cache": True}
    _, eager = run(False, **kw)
    model, compiled = run(True, **kw)
    assert compiled.compile["at_step"] == 0  # frames_compiled may be 0: an earlier test compiled the same graphs
    assert compiled.trunk_cache is not None
    assert not is_compiled(model)  # eager again for whatever the caller runs next
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=2e-2, atol=2e-2)


@pytest.mark.slow
def test_auto_compiles_after_the_probe_steps_when_the_run_is_long_enough():
    model, res = run("auto", task="classification", policy="full", compile_min_seconds=0.0)
    assert res.compile["at_step"] == 2 and res.compile["warmup_seconds"] is not None
    _, eager = run(False, task="classification", policy="full")
    np.testing.assert_allclose(res.losses, eager.losses, rtol=2e-2, atol=2e-2)


@pytest.mark.slow
def test_evaluations_and_checks_between_compiled_steps_compile_no_graphs_of_their_own(tmp_path):
    """The no-grad forwards between steps (evaluation, the loss after an update) run the blocks eagerly: they
    would otherwise compile graphs of their own and use up dynamo's recompile limit mid-run."""
    import torch._dynamo
    frames = []
    for every in (None, 1):
        torch._dynamo.reset()
        model = tiny_model("qa")
        cfg = TrainConfig(policy="lora:4", epochs=1, batch_size=8, lr=1e-3, amp="bf16", progress=False, seed=3,
                          compile=True, eval_every=every, checkpoint_every=every,
                          output_dir=str(tmp_path / str(every)))
        res = train(model, dataset("qa", n=32), cfg, eval_set=dataset("qa", n=12, seed=7) if every else None)
        assert not every or len(res.metrics) == 4
        frames.append(res.compile["frames_compiled"])
    assert frames[0] == frames[1] > 0
    # The blocks' input variants (first block's input without grad, masks, lengths, sizes) stay compiled: dynamo's
    # default limit of 8 graphs would otherwise switch them to eager in mid-run.
    assert torch._dynamo.config.recompile_limit >= 64
