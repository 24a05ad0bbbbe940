"""Fused projections (llama_ft/model/fused.py): the same outputs and gradients as one projection at a time, for
plain, LoRA and mixed layers, with the Hugging Face names untouched."""
import pytest
import torch
from tiny import tiny_model

import llama_ft.model.fused as fused
from llama_ft.model.fused import _fusable, project
from llama_ft.model.lora import add_lora


def outputs_and_grads(model, ids, mask):
    model.zero_grad()
    out = model(ids, mask)
    out.float().pow(2).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("targets", [None, ("q_proj", "v_proj", "up_proj")])
def test_fused_equals_separate_for_plain_and_lora_layers(monkeypatch, targets):
    torch.manual_seed(0)
    model = tiny_model("classification").float()
    names = list(model.state_dict())
    if targets:
        add_lora(model, 4, targets=targets, layers=[1])   # layer 1 mixes LoRA and plain projections: not fused
    else:
        add_lora(model, 4, layers=[1])                    # layer 1: all LoRA (fused), layer 0: plain (fused)
    for m in model.modules():
        if hasattr(m, "lora_B"):
            torch.nn.init.normal_(m.lora_B, std=0.1)      # B = 0 would hide a wrong up-projection
    ids = torch.randint(3, model.config.vocab_size, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    got = outputs_and_grads(model, ids, mask)
    monkeypatch.setattr(fused, "FUSE", False)
    want = outputs_and_grads(model, ids, mask)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert got[1].keys() == want[1].keys() and any("lora_A" in n for n in got[1])
    for n in want[1]:
        torch.testing.assert_close(got[1][n], want[1][n], rtol=1e-4, atol=1e-6, msg=n)
    assert [n for n in model.state_dict() if "lora" not in n] == names


def test_what_fuses():
    model = tiny_model("classification")
    attn = model.backbone.layers[0].self_attn
    assert _fusable([attn.q_proj, attn.k_proj, attn.v_proj]) == "plain"
    add_lora(model, 4, targets=("q_proj", "k_proj"), layers=[0])
    assert _fusable([attn.q_proj, attn.k_proj]) == "lora"
    assert _fusable([attn.q_proj, attn.k_proj, attn.v_proj]) is None
    x = torch.randn(2, 5, model.config.hidden_size)
    assert [t.shape[-1] for t in project(x, [attn.q_proj, attn.k_proj])] == [attn.q_proj.out_features,
                                                                            attn.k_proj.out_features]
