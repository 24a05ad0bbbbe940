"""Freezing policies: parsing, and which parameters each one trains."""
import pytest
from tiny import tiny_model

from llama_ft.model.lora import LoRALinear
from llama_ft.model.policies import Policy, apply_policy, parse_policy


@pytest.mark.parametrize("spec, policy", [
    ("head", Policy("head")),
    ("full", Policy("full")),
    ("last:4", Policy("last", k=4)),
    ("lora:16", Policy("lora", rank=16)),
    ("lora:8:32", Policy("lora", rank=8, alpha=32.0)),
    ("lora:16:last:2", Policy("lora", k=2, rank=16)),
    ("LoRA:8:16:last:3", Policy("lora", k=3, rank=8, alpha=16.0)),
])
def test_policies_parse_and_print_back(spec, policy):
    assert parse_policy(spec) == policy
    assert parse_policy(str(policy)) == policy


@pytest.mark.parametrize("spec", ["lora", "lora:0", "lora:8:last", "lora:8:last:0", "last", "last:x", "some"])
def test_bad_policies_name_the_argument(spec):
    with pytest.raises(ValueError, match=r"policy=.*lora:R\[:ALPHA\]\[:last:K\]"):
        parse_policy(spec)


def test_lora_on_the_top_blocks_leaves_the_bottom_whole_and_frozen():
    model = tiny_model()
    n = len(model.backbone.layers)
    apply_policy(model, "lora:4:last:2")
    for i, layer in enumerate(model.backbone.layers):
        wrapped = [m for m in layer.modules() if isinstance(m, LoRALinear)]
        trainable = [name for name, p in layer.named_parameters() if p.requires_grad]
        if i < n - 2:
            assert not wrapped and not trainable, i
        else:
            assert len(wrapped) == 7 and trainable and all("lora_" in name for name in trainable), i
    assert all(p.requires_grad for p in model.score.parameters())
    assert not model.backbone.embed_tokens.weight.requires_grad


def test_lora_on_more_blocks_than_the_model_has_is_refused():
    with pytest.raises(ValueError, match=r"policy='lora:4:last:9'.*\(4\)"):
        apply_policy(tiny_model(), "lora:4:last:9")
