"""LoRA trained through merged weights (llama_ft/model/merged_lora.py, lora.MergedTraining): the outputs and
gradients of the adapters as written, buffers that follow the adapters and never reach a state dict, and train()
holding them only where they were measured."""
import pytest
import torch
from tiny import dataset, tiny_model

from llama_ft.hardware import cpu_has_amx
from llama_ft.model import lora, merged_lora
from llama_ft.model.lora import LoRALinear, MergedTraining, add_lora
from llama_ft.train import TrainConfig, train


def lora_model(**kw):
    """A tiny QA model, frozen, with rank-4 adapters whose B is not zero (at init W' = W would hide a wrong
    up-projection)."""
    model = tiny_model("qa")
    model.requires_grad_(False)
    add_lora(model, rank=4, **kw)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.05)
    return model.train()


def batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 101, (n, 17), generator=g), torch.ones(n, 17, dtype=torch.long)


def outputs_and_grads(model, ids, mask, amp=False):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        start, end = model(ids, mask)
    (start.float().square().sum() + end.float().sum()).backward()
    return (start.detach().float(), end.detach().float()), {n: p.grad.clone() for n, p in model.named_parameters()
                                                            if p.grad is not None}


def calls(monkeypatch) -> list[int]:
    """How many projections each merged call took."""
    seen, real = [], merged_lora.merged_projections
    monkeypatch.setattr(lora, "merged_projections", lambda x, ps: seen.append(len(ps)) or real(x, ps))
    return seen


def test_fp32_merged_weights_give_the_outputs_and_gradients_of_the_adapters_as_written(monkeypatch):
    """In fp32 the merged path is the same function: outputs and the gradients of x, A and B (every adapter of
    q/k/v, o, gate/up and down) equal the adapters' as written; q/k/v and gate/up run as one call each."""
    model = lora_model()
    ids, mask = batch()
    want_out, want_grads = outputs_and_grads(model, ids, mask)
    seen = calls(monkeypatch)
    merged = MergedTraining(model, torch.float32)
    got_out, got_grads = outputs_and_grads(model, ids, mask)
    merged.close()
    assert len(wrapped := [m for m in model.modules() if isinstance(m, LoRALinear)]) == 4 * 7
    assert sorted(seen) == sorted([3, 1, 2, 1] * 4)  # per layer: q/k/v, o, gate/up, down
    for w, g in zip(want_out, got_out):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert got_grads.keys() == want_grads.keys() and sum(".lora_" in n for n in got_grads) == 2 * len(wrapped)
    for n in want_grads:
        torch.testing.assert_close(got_grads[n], want_grads[n], rtol=1e-5, atol=1e-6 * want_grads[n].abs().max().item(),
                                   msg=n)


def test_the_buffers_follow_the_adapters_only_when_refreshed_and_never_reach_a_state_dict():
    model = lora_model()
    ids, mask = batch()
    keys = set(model.state_dict())
    merged = MergedTraining(model, torch.float32)
    assert set(model.state_dict()) == keys  # buffers, but not persistent: checkpoints and exports are unchanged
    with torch.no_grad():
        for m in merged.adapters:
            m.lora_B.add_(0.05)  # as an optimizer step would
        stale = model(ids, mask)
        merged.refresh()
        fresh = model(ids, mask)
    merged.close()
    assert all(m.merged_weight is None and m.scaled_A is None and m.scaled_B is None for m in merged.adapters)
    with torch.no_grad():
        want = model(ids, mask)  # as written, with the changed B
    torch.testing.assert_close(fresh[0], want[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(stale[0], want[0], atol=1e-3)  # a buffer not refreshed holds the old adapter


def test_adapters_with_dropout_a_hook_or_a_bias_are_not_held():
    assert MergedTraining(lora_model(dropout=0.1), torch.float32).adapters == []
    model = lora_model()
    attn = model.backbone.layers[0].self_attn
    handle = attn.k_proj.register_forward_hook(lambda m, i, o: None)
    held = MergedTraining(model, torch.float32).adapters
    assert attn.k_proj not in held and attn.q_proj in held and len(held) == 4 * 7 - 1
    handle.remove()
    model = lora_model()
    model.backbone.layers[0].mlp.down_proj.bias = torch.nn.Parameter(torch.zeros(64), requires_grad=False)
    assert len(MergedTraining(model, torch.float32).adapters) == 4 * 7 - 1
    assert MergedTraining(lora_model(), None).adapters == []


def test_merged_weights_only_for_bf16_on_a_cpu_with_amx_in_one_process(monkeypatch):
    cpu, cuda, bf16 = torch.device("cpu"), torch.device("cuda"), torch.bfloat16
    monkeypatch.setattr(lora, "cpu_has_amx", lambda: True)
    assert lora.merged_dtype(cpu, bf16, 1) == bf16
    assert lora.merged_dtype(cpu, None, 1) is None  # fp32 training: not measured
    assert lora.merged_dtype(cpu, bf16, 2) is None  # DDP would broadcast the buffers every step
    assert lora.merged_dtype(cuda, bf16, 1) is None  # not measured on a GPU
    monkeypatch.setattr(lora, "MERGED_TRAINING", False)
    assert lora.merged_dtype(cpu, bf16, 1) is None
    monkeypatch.setattr(lora, "MERGED_TRAINING", True)
    monkeypatch.setattr(lora, "cpu_has_amx", lambda: False)
    assert lora.merged_dtype(cpu, bf16, 1) is None


def test_bf16_merged_weights_err_against_fp32_about_as_much_as_the_adapters_as_written():
    """W' = W + s B A rounded to bf16 adds one rounding the frozen W does not carry: the outputs' error against fp32
    stays within twice that of the adapters as written (BENCHMARKS.md, session 34), and the gradients' too."""
    model = lora_model()
    ids, mask = batch()
    exact_out, exact_grads = outputs_and_grads(model, ids, mask)
    written_out, written_grads = outputs_and_grads(model, ids, mask, amp=True)
    merged = MergedTraining(model, torch.bfloat16)
    got_out, got_grads = outputs_and_grads(model, ids, mask, amp=True)
    merged.close()

    def err(a, b):
        return ((a - b).norm() / b.norm()).item()
    assert err(got_out[0], exact_out[0]) < 2 * err(written_out[0], exact_out[0]) + 1e-3
    for n in exact_grads:
        assert err(got_grads[n], exact_grads[n]) < 2 * err(written_grads[n], exact_grads[n]) + 1e-3, n


@pytest.mark.skipif(not cpu_has_amx(), reason="train() holds merged weights on a CPU with AMX only")
def test_train_trains_lora_through_merged_weights_on_amx_and_drops_them_after(monkeypatch, tmp_path):
    """bf16 on this CPU: every step's projections take the merged path, the losses follow those of the adapters
    as written to bf16 tolerance, and the model leaves train() without buffers. A large learning rate moves the
    adapters far in a step, so buffers left unrefreshed after an update miss the next loss by percents; two bf16
    runs part after a few such steps, so the first five are compared."""
    data = dataset("qa", n=64)
    cfg = dict(policy="lora:4", epochs=1, batch_size=8, lr=2e-2, amp="bf16", compile=False, progress=False, seed=0)
    monkeypatch.setattr(lora, "MERGED_TRAINING", False)
    written = train(tiny_model("qa"), data, TrainConfig(**cfg, output_dir=str(tmp_path / "written")))
    monkeypatch.setattr(lora, "MERGED_TRAINING", True)
    seen = calls(monkeypatch)
    model = tiny_model("qa")
    res = train(model, data, TrainConfig(**cfg, output_dir=str(tmp_path / "merged")))
    assert len(seen) >= 4 * 4 * len(res.losses)  # four calls a layer, each step
    assert all(m.merged_weight is None for m in model.modules() if isinstance(m, LoRALinear))
    assert res.losses[:5] == pytest.approx(written.losses[:5], rel=5e-3)
