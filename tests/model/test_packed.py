"""llama_ft.model.packed: bf16 weights laid out once for oneDNN while a model generates on a CPU with AMX."""
import pytest
import torch
import torch.nn.functional as F

from llama_ft.model import generate as gen
from llama_ft.model import packed
from llama_ft.model.linear import Linear
from llama_ft.model.llama import LlamaForCausalLM
from llama_ft.model.packed import packed_weights, packs
from tests.tiny import tiny_config

bf16_kernels = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
pytestmark = pytest.mark.skipif(packed._reorder is None or bf16_kernels is None or not bf16_kernels(),
                                reason="this torch or CPU has no oneDNN bf16 kernels")


@pytest.fixture
def on_amx(monkeypatch):
    """The rule as on a CPU with AMX (oneDNN runs the same products on any CPU with bf16 kernels)."""
    monkeypatch.setattr(packed, "AMX", True)


@pytest.fixture
def packed_calls(monkeypatch):
    """How many products ran by a packed weight."""
    calls = []
    op = packed._packed_linear
    monkeypatch.setattr(packed, "_packed_linear", lambda *a: calls.append(a[0].shape) or op(*a))
    return calls


def test_inside_the_context_a_linear_multiplies_by_its_packed_weight_with_f_linears_products(on_amx, packed_calls):
    torch.manual_seed(0)
    layer = Linear(96, 160, bias=True).to(torch.bfloat16)
    inputs = [torch.randn(1, 96), torch.randn(64, 1, 96), torch.randn(3, 7, 96), torch.randn(3, 7, 192)[..., ::2],
              torch.randn(4, 9, 96)[:, -1:]]   # a decoding step, a prefill, a strided view, the last position
    inputs = [x.to(torch.bfloat16) for x in inputs]
    with torch.inference_mode(), packed_weights(layer) as n:
        assert n == 1 and layer.packed_weight is not None
        for x in inputs:
            assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    assert len(packed_calls) == len(inputs) and layer.packed_weight is None


def test_the_context_leaves_the_model_as_it_was_and_autograd_takes_the_weights(on_amx, packed_calls):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config()).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert len(linears) == 4 * 7 + 1   # q/k/v/o and gate/up/down in every block, and the LM head
    ids = torch.tensor([[5, 6, 7, 8]])
    with packed_weights(model) as outer:
        assert outer == len(linears)
        with packed_weights(model) as inner:
            assert inner == 0
        assert all(m.packed_weight is not None for m in linears)   # the inner context removed none of them
        model(ids).float().sum().backward()   # with autograd: the weights themselves, and their gradients
        assert not packed_calls and model.model.layers[0].mlp.up_proj.weight.grad is not None
    assert all(m.packed_weight is None for m in linears)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_only_bf16_weights_on_a_cpu_with_amx_are_packed(monkeypatch):
    weight = torch.zeros(8, 8, dtype=torch.bfloat16)
    monkeypatch.setattr(packed, "AMX", True)
    assert packs(weight) and not packs(weight.float())
    monkeypatch.setattr(packed, "PACKED", False)
    assert not packs(weight)
    monkeypatch.setattr(packed, "PACKED", True)
    monkeypatch.setattr(packed, "AMX", False)
    assert not packs(weight)


def test_generation_multiplies_by_packed_weights_with_the_same_replies(on_amx, packed_calls, monkeypatch):
    torch.manual_seed(3)
    model = LlamaForCausalLM(tiny_config(num_hidden_layers=2)).to(torch.bfloat16).eval()
    prefix = list(range(20, 32))
    groups = [[prefix + [5, 6, 7, 8], prefix + [9, 10]], [prefix + [40, 41, 42]]]
    kwargs = dict(max_new_tokens=5, stop_ids=[], prefill_batch=1)
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    # The heap goes back to the system once the copies are gone, or their pages would stay with the process.
    held_at_release = []
    monkeypatch.setattr(gen, "release_free_memory",
                        lambda: held_at_release.append(any(m.packed_weight is not None for m in linears)) or True)
    with_packed = list(gen.generate_groups(model, groups, **kwargs))
    ran = len(packed_calls)
    assert ran > 0 and held_at_release == [False] and all(m.packed_weight is None for m in linears)
    monkeypatch.setattr(packed, "PACKED", False)
    assert list(gen.generate_groups(model, groups, **kwargs)) == with_packed
    assert len(packed_calls) == ran   # none without
