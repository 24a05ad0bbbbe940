"""TrainConfig.cuda_graphs: where CUDA graphs apply, and what the loop does for them that must not change the
math (lengths padded to a multiple, gradients taken out of the graphs' pool). The graphs themselves run in
tests/train/test_cuda.py."""
import numpy as np
import pytest
import torch
from tiny import dataset, tiny_model

from llama_ft.train import TrainConfig, train_step
from llama_ft.train.batching import collate, padded_length
from llama_ft.train.graphs import LENGTH_MULTIPLE, own_grads, resolve_cuda_graphs
from llama_ft.train.loop import TaskLoss, apply_training_policy, micro_batch
from llama_ft.train.optim import build_optimizer, build_scheduler
from llama_ft.train.trunk import TrunkCache, find_split


def test_auto_uses_graphs_only_where_they_apply():
    assert resolve_cuda_graphs("auto", "cuda", "auto", grad_checkpointing=False, world=1)
    assert resolve_cuda_graphs(True, "cuda", True, grad_checkpointing=False, world=1)
    assert not resolve_cuda_graphs("auto", "cpu", "auto", grad_checkpointing=False, world=1)
    assert not resolve_cuda_graphs("auto", "cuda", False, grad_checkpointing=False, world=1)
    assert not resolve_cuda_graphs("auto", "cuda", "auto", grad_checkpointing=True, world=1)
    assert not resolve_cuda_graphs("auto", "cuda", "auto", grad_checkpointing=False, world=2)
    assert not resolve_cuda_graphs(False, "cuda", True, grad_checkpointing=False, world=1)


@pytest.mark.parametrize("device,compile,ckpt,world,says", [
    ("cpu", True, False, 1, "device is cpu"),
    ("cuda", False, False, 1, "compile=False"),
    ("cuda", True, True, 1, "grad_checkpointing"),
    ("cuda", True, False, 2, "2 processes"),
])
def test_insisting_on_graphs_where_they_cannot_run_names_why_and_the_fix(device, compile, ckpt, world, says):
    with pytest.raises(ValueError, match=rf"cuda_graphs=True, but .*{says}.*cuda_graphs='auto'"):
        resolve_cuda_graphs(True, device, compile, grad_checkpointing=ckpt, world=world)


def test_config_refuses_an_unknown_setting():
    with pytest.raises(ValueError, match="TrainConfig.cuda_graphs='yes'; use auto, True or False"):
        TrainConfig(cuda_graphs="yes")


def test_collate_rounds_the_length_up_to_the_multiple():
    rows = [{"input_ids": [5] * n, "label": 0} for n in (3, 65, 40)]
    assert collate(rows, 0)["input_ids"].shape == (3, 65)
    b = collate(rows, 0, 64)
    assert b["input_ids"].shape == (3, 128) and b["attention_mask"].sum().item() == 108
    assert (b["input_ids"][0, 3:] == 0).all()
    assert [padded_length(n, 64) for n in (1, 64, 65, 128)] == [64, 64, 128, 128]


@pytest.mark.parametrize("task,policy,cached", [("qa", "lora:4", False), ("classification", "full", False),
                                                ("qa", "last:2", True), ("classification", "last:2", True)])
def test_padding_to_the_multiple_keeps_the_loss_and_gradient(task, policy, cached):
    """The micro-batch the loop builds for graphs (ids, or the trunk cache's features, padded to LENGTH_MULTIPLE)
    gives the loss and gradients of the unpadded one."""
    model = tiny_model(task).float()
    cfg = TrainConfig(policy=policy, progress=False)
    apply_training_policy(model, cfg)
    data = dataset(task, n=6, max_len=40)
    split = find_split(model)
    cache = None
    if cached:
        lengths = np.array([len(d["input_ids"]) for d in data])
        cache = TrunkCache(model, split, data, lengths, batch_size=4, device=torch.device("cpu"), amp_dtype=None,
                           dtype=torch.float32, ram_bytes=2**30, tmp_dir=None, show_progress=False, compile=False)
    loss_model = TaskLoss(model, split, torch.float32)
    idx = np.arange(len(data))
    got = []
    for multiple in (1, LENGTH_MULTIPLE):
        mb = micro_batch(data, idx, model.config.pad_token_id, torch.device("cpu"), cache, multiple)
        assert mb["attention_mask"].shape[1] % multiple == 0
        model.zero_grad(set_to_none=True)
        loss = loss_model(**mb)
        loss.backward()
        got.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (l1, g1), (l64, g64) = got
    torch.testing.assert_close(l64, l1, rtol=1e-5, atol=1e-5)
    for a, b in zip(g64, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_own_grads_copies_each_gradient_out_of_its_memory():
    p = torch.nn.Parameter(torch.ones(3))
    q = torch.nn.Parameter(torch.ones(2))
    (p * 2).sum().backward()
    before = p.grad
    own_grads([p, q])
    assert p.grad.data_ptr() != before.data_ptr() and torch.equal(p.grad, before) and q.grad is None


def test_a_step_marked_for_graphs_computes_the_same_update():
    """train_step(graphs=True) marks each forward and copies the gradients out between micro-batches: on eager
    blocks, where neither matters, the step's loss, gradient norm and weights are those of graphs=False."""
    out = []
    for graphs in (False, True):
        model = tiny_model("qa").float()
        cfg = TrainConfig(policy="lora:4", progress=False, lr=1e-2)
        apply_training_policy(model, cfg)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = build_optimizer(model, cfg.lr, cfg.weight_decay, torch.device("cpu"))
        sched = build_scheduler(opt, 4, 0.0, "linear")
        data = dataset("qa", n=8, max_len=40)
        mbs = [micro_batch(data, idx, model.config.pad_token_id, torch.device("cpu"), None, 64)
               for idx in np.array_split(np.arange(8), 2)]
        loss, norm = train_step(TaskLoss(model, find_split(model), torch.float32), mbs, opt, sched,
                                torch.amp.GradScaler("cpu", enabled=False), params, step_examples=8, world=1,
                                amp_dtype=None, device=torch.device("cpu"), max_grad_norm=1.0, graphs=graphs)
        out.append((loss, norm, [p.detach().clone() for p in params]))
    (l0, n0, w0), (l1, n1, w1) = out
    assert l1 == pytest.approx(l0, rel=1e-6) and n1 == pytest.approx(n0, rel=1e-6)
    for a, b in zip(w1, w0, strict=True):
        torch.testing.assert_close(a, b)
