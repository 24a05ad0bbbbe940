"""llama_ft/model/linear.py: weight gradients with the summed token dimension laid out contiguously, in compiled
bf16 CPU training: the same gradients as autograd's, operands that really arrive row-major, and where it is taken."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import dataset, tiny_model
from torch._dynamo.comptime import comptime

import llama_ft.model.linear as linear
from llama_ft.model.linear import Linear, add_up_projection, mm_contiguous, use_token_major, weight_grad
from llama_ft.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def on_amx(monkeypatch):
    """The path as a CPU with AMX takes it (on any CPU it computes the same gradients)."""
    monkeypatch.setattr(linear, "AMX", True)
    monkeypatch.setattr(linear, "TOKEN_MAJOR", True)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("n,k", [(12, 40), (40, 12), (24, 24)])
def test_weight_grad_is_dy_transposed_times_x(n, k):
    g = torch.Generator().manual_seed(0)
    dy, x = torch.randn(50, n, generator=g), torch.randn(50, k, generator=g)
    got = weight_grad(dy, x)
    torch.testing.assert_close(got, dy.t() @ x, rtol=1e-5, atol=1e-5)
    assert got.shape == (n, k) and got.is_contiguous()
    torch.testing.assert_close(mm_contiguous(x.t(), dy), x.t() @ dy, rtol=1e-5, atol=1e-5)


def compiled_grads(fn, *inputs):
    """fn's output and the gradients of its inputs, compiled (as a training block is) under bf16 autocast."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    with torch.autocast("cpu", torch.bfloat16):
        out = compiled(*leaves)
    out.float().pow(2).sum().backward()
    return out.detach().float(), [t.grad for t in leaves]


@pytest.mark.parametrize("n,k", [(48, 16), (16, 48), (32, 32)])
@pytest.mark.parametrize("bias", [False, True])
def test_a_compiled_linear_has_autograds_gradients(n, k, bias, on_amx, monkeypatch):
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(2, 9, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    fn = (lambda x, w, b: linear.linear(x, w, b)) if bias else (lambda x, w: linear.linear(x, w))
    args = (x, w, b) if bias else (x, w)
    ours = compiled_grads(fn, *args)
    monkeypatch.setattr(linear, "TOKEN_MAJOR", False)
    torch._dynamo.reset()
    theirs = compiled_grads(fn, *args)
    torch.testing.assert_close(ours[0], theirs[0])  # the same forward
    for a, b_ in zip(ours[1], theirs[1], strict=True):
        assert a.dtype == b_.dtype == torch.float32 and a.shape == b_.shape and a.is_contiguous()
        torch.testing.assert_close(a, b_, rtol=2e-2, atol=2e-2)  # bf16 GEMMs summed in another order


def test_lora_up_projection_has_autograds_gradients(on_amx, monkeypatch):
    g = torch.Generator().manual_seed(2)
    y, z, b = torch.randn(3, 7, 40, generator=g), torch.randn(3, 7, 12, generator=g), torch.randn(40, 4, generator=g)
    fn = lambda y, z, b: add_up_projection(y, z[..., 4:8], b)  # noqa: E731  (a column slice, as stacked adapters)
    ours = compiled_grads(fn, y, z, b)
    monkeypatch.setattr(linear, "TOKEN_MAJOR", False)
    torch._dynamo.reset()
    theirs = compiled_grads(fn, y, z, b)
    torch.testing.assert_close(ours[0], theirs[0])
    for a, b_ in zip(ours[1], theirs[1], strict=True):
        torch.testing.assert_close(a, b_, rtol=2e-2, atol=2e-2)


def test_inside_a_compiled_graph_the_summed_dimension_arrives_contiguous(on_amx, tmp_path):
    """The GEMM's operands as oneDNN receives them (the profiler's input strides). Without the custom op's layout
    tag, inductor passed the transposed copy of dY as the strided view again (strides (1, N))."""
    g = torch.Generator().manual_seed(3)
    m, k, n = 64, 48, 16  # n < k: dY is laid out [n, m] first
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    with torch.profiler.profile(record_shapes=True) as prof:
        compiled_grads(lambda x, w: linear.linear(x, w), x, w)
    prof.export_chrome_trace(str(tmp_path / "trace.json"))
    gemms = [e["args"] for e in json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
             if e.get("name") == "aten::mm" and e.get("args", {}).get("Input Dims", [None])[0] == [n, m]]
    assert gemms, "no weight-gradient GEMM [n, m] x [m, k] in the trace"
    assert all(a["Input Strides"][0] == [m, 1] for a in gemms), [a["Input Strides"] for a in gemms]


def test_only_a_compiled_bf16_cpu_training_projection_takes_it(on_amx, monkeypatch):
    x, w = torch.zeros(4, 8), torch.zeros(6, 8, requires_grad=True)
    seen = []

    def probe(x, w):
        seen.append(use_token_major(x, w))
        return F.linear(x, w)
    compiled = torch.compile(probe, fullgraph=True)
    with torch.autocast("cpu", torch.bfloat16):
        compiled(x, w)
        probe(x, w)  # eager
        compiled(x, w.detach())  # a frozen weight: no weight gradient
        with torch.no_grad():
            compiled(x, w)
    compiled(x, w)  # fp32
    monkeypatch.setattr(linear, "AMX", False)
    torch._dynamo.reset()
    with torch.autocast("cpu", torch.bfloat16):
        compiled(x, w)
    assert seen == [True, False, False, False, False, False]


def test_the_model_projections_keep_nn_linears_names_and_state_dict():
    model = tiny_model()
    q = model.backbone.layers[0].self_attn.q_proj
    assert type(q) is Linear and isinstance(q, torch.nn.Linear)
    assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"} <= set(model.state_dict())


TRACED_WEIGHT_GRADS: list[bool] = []


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["full", "lora:4"])
def test_compiled_training_with_it_matches_compiled_training_without_it(policy, on_amx, monkeypatch):
    data = dataset("classification", n=16)
    cfg = {"policy": policy, "epochs": 1, "batch_size": 8, "lr": 1e-3, "amp": "bf16", "progress": False, "seed": 3,
           "trunk_cache": False, "compile": True}
    real = linear.weight_grad

    def counted(dy, x):
        # Recorded while dynamo traces the backward, not in its graph (tests/conftest.py); a comptime function
        # takes no closure, so the list is the module's.
        comptime(lambda ctx: TRACED_WEIGHT_GRADS.append(True))
        return real(dy, x)
    TRACED_WEIGHT_GRADS.clear()
    monkeypatch.setattr(linear, "weight_grad", counted)
    ours = train(tiny_model(), data, TrainConfig(**cfg))
    assert TRACED_WEIGHT_GRADS  # traced into the compiled backward
    monkeypatch.setattr(linear, "TOKEN_MAJOR", False)
    torch._dynamo.reset()
    theirs = train(tiny_model(), data, TrainConfig(**cfg))
    np.testing.assert_allclose(ours.losses, theirs.losses, rtol=2e-2, atol=2e-2)
