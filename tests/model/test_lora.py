"""LoRA adapters folded into their weights for inference: the same outputs, the adapters back in place after;
adapters of projections that share their input stacked into one down-projection: the same outputs and gradients."""
import pytest
import torch
from tiny import dataset, tiny_model
from torch.utils._python_dispatch import TorchDispatchMode

from llama_ft.model import lora
from llama_ft.model.lora import LoRALinear, add_lora, merged_adapters
from llama_ft.train import loop, predict


def trained_lora_model(frozen_dtype=torch.float32):
    """A tiny QA model with rank-4 adapters whose B is not zero (at init the merge would change nothing)."""
    model = tiny_model("qa")
    add_lora(model, rank=4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.weight.data = m.weight.data.to(frozen_dtype)
                m.lora_B.normal_(0, 0.05)
    return model.eval()


def batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 101, (n, 17), generator=g), torch.ones(n, 17, dtype=torch.long)


def test_merged_adapters_give_the_same_outputs_and_put_the_adapters_back():
    model = trained_lora_model()
    ids, mask = batch()
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    params = dict(model.named_parameters())
    with torch.no_grad():
        want = model(ids, mask)
        with merged_adapters(model) as n:
            assert n == len(wrapped) == 4 * 7
            assert not any(isinstance(m, LoRALinear) for m in model.modules())
            got = model(ids, mask)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    assert [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)] == wrapped  # the same objects
    assert dict(model.named_parameters()) == params  # names and tensors: what the optimizer holds
    assert all(p.requires_grad for n, p in params.items() if "lora_" in n)


def test_merged_adapters_put_the_adapters_back_when_the_pass_fails():
    model = trained_lora_model()
    wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
    with pytest.raises(RuntimeError, match="in the pass"), merged_adapters(model):
        raise RuntimeError("in the pass")
    assert [m for m in model.modules() if isinstance(m, LoRALinear)] == wrapped


def test_merged_adapters_disabled_leave_the_model_alone():
    model = trained_lora_model()
    with merged_adapters(model, enabled=False) as n:
        assert n == 0 and sum(isinstance(m, LoRALinear) for m in model.modules()) == 28


@pytest.mark.parametrize("frozen", [torch.float32, torch.bfloat16])
def test_predict_merges_the_adapters_of_a_long_pass_only(monkeypatch, frozen):
    """A pass of MERGE_MIN_TOKENS or more runs no adapter (they are merged); a shorter one runs them; under bf16
    autocast both give the same logits to bf16 rounding."""
    model = trained_lora_model(frozen)
    data = dataset("qa", n=40, seed=3)
    calls = []
    real_forward = LoRALinear.forward
    monkeypatch.setattr(LoRALinear, "forward", lambda self, x: calls.append(1) or real_forward(self, x))
    monkeypatch.setattr(loop, "MERGE_MIN_TOKENS", 1)
    merged = predict(model, data, batch_size=8, amp="bf16", compile=False)
    assert not calls
    monkeypatch.setattr(loop, "MERGE_MIN_TOKENS", 10**9)
    unmerged = predict(model, data, batch_size=8, amp="bf16", compile=False)
    assert calls
    for (ms, me), (us, ue) in zip(merged, unmerged):
        torch.testing.assert_close(ms, us, rtol=0.05, atol=0.05)
        torch.testing.assert_close(me, ue, rtol=0.05, atol=0.05)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 28


def test_eval_loss_merges_the_adapters_of_a_long_pass_with_the_same_loss(monkeypatch):
    model = trained_lora_model(torch.bfloat16)
    data = dataset("qa", n=40, seed=3)
    calls = []
    real_forward = LoRALinear.forward
    monkeypatch.setattr(LoRALinear, "forward", lambda self, x: calls.append(1) or real_forward(self, x))
    monkeypatch.setattr(loop, "MERGE_MIN_TOKENS", 1)
    merged = loop.eval_loss(model, data, 8, torch.bfloat16, torch.device("cpu"))
    assert not calls
    monkeypatch.setattr(loop, "MERGE_MIN_TOKENS", 10**9)
    unmerged = loop.eval_loss(model, data, 8, torch.bfloat16, torch.device("cpu"))
    assert calls
    assert merged == pytest.approx(unmerged, rel=0.02)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 28


class GemmCount(TorchDispatchMode):
    """The matrix multiplies a region runs, by the width of their output."""

    def __init__(self):
        super().__init__()
        self.widths = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            self.widths.append(out.shape[-1])
        return out


def outputs_and_grads(model, ids, mask):
    model.zero_grad()
    with GemmCount() as gemms:
        start, end = model(ids, mask)
    (start.square().sum() + end.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return (start, end), grads, gemms.widths


@pytest.mark.parametrize("targets", [lora.TARGETS, ("q_proj", "v_proj", "up_proj", "down_proj")])
def test_adapters_sharing_an_input_run_one_down_projection_with_the_same_outputs_and_gradients(monkeypatch, targets):
    """q/k/v (and gate/up) adapters compute x A^T for all of them in one GEMM, k r wide; outputs and every
    adapter's gradient equal those of one GEMM per adapter. A projection without an adapter runs as it is."""
    model = tiny_model("qa")
    add_lora(model, rank=4, targets=targets)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.05)
    model.train()
    ids, mask = batch()
    monkeypatch.setattr(lora, "STACK_SHARED_INPUT", False)
    want_out, want_grads, alone = outputs_and_grads(model, ids, mask)
    monkeypatch.setattr(lora, "STACK_SHARED_INPUT", True)
    got_out, got_grads, stacked = outputs_and_grads(model, ids, mask)
    for w, g in zip(want_out, got_out):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert got_grads.keys() == want_grads.keys() and any(".lora_A" in n for n in got_grads)
    for n in want_grads:
        # fp32 sums in another order: a few ulps of the largest entry
        torch.testing.assert_close(got_grads[n], want_grads[n], rtol=1e-5, atol=1e-6 * want_grads[n].abs().max().item(),
                                   msg=n)
    layers, r = len(model.backbone.layers), 4
    groups = 1 if "k_proj" not in targets else 2  # gate/up share only when both have adapters
    width = 2 * r if "k_proj" not in targets else 3 * r
    assert stacked.count(width) >= layers  # one stacked down-projection per layer and group, forward
    assert len(alone) - len(stacked) >= groups * layers  # forward: fewer GEMMs; backward: fewer again


def test_adapters_that_cannot_share_a_gemm_run_alone():
    """Dropout (each adapter draws its own mask), different ranks and a forward hook keep one GEMM each."""
    model = tiny_model("qa")
    add_lora(model, rank=4, dropout=0.1)
    attn = model.backbone.layers[0].self_attn
    assert lora._stackable((attn.q_proj, attn.k_proj, attn.v_proj)) == []
    model = tiny_model("qa")
    add_lora(model, rank=4)
    attn, mlp = model.backbone.layers[0].self_attn, model.backbone.layers[0].mlp
    assert lora._stackable((attn.q_proj, attn.k_proj, attn.v_proj)) == [0, 1, 2]
    attn.k_proj.rank = 8
    assert lora._stackable((attn.q_proj, attn.k_proj, attn.v_proj)) == []
    seen = []
    handle = mlp.up_proj.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert lora._stackable((mlp.gate_proj, mlp.up_proj)) == []
    with torch.no_grad():
        model(*batch())
    assert len(seen) == 1
    handle.remove()
    assert lora._stackable((mlp.gate_proj, mlp.up_proj)) == [0, 1]
