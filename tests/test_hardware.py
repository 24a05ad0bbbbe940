"""llama_ft/hardware.py and the autocast rules that follow it: bf16 by default only on a CPU that computes bf16 dot
products, fp32 on any other CPU, and a model held in bf16 still runs in bf16 wherever it is."""
import pytest
import torch
from tiny import tiny_model

from llama_ft import hardware
from llama_ft.train.config import inference_amp, resolve_amp, resolve_frozen_dtype
from llama_ft.train.loop import predict

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, bf16", [
    ({"avx512_bf16": False, "amx_bf16": False}, False),  # AVX2 or AVX-512 without BF16: Zen 3, Skylake, laptops
    ({"avx512_bf16": True, "amx_bf16": False}, True),    # Zen 4, Cooper Lake
    ({"avx512_bf16": False, "amx_bf16": True}, True),    # AMX alone still counts
])
def test_auto_is_bf16_only_where_the_cpu_computes_it(pretend_cpu, flags, bf16):
    pretend_cpu(**flags)
    assert hardware.cpu_has_bf16_dot() is bf16
    assert resolve_amp("auto", CPU) == (torch.bfloat16 if bf16 else None)
    # and the frozen weights follow: bf16 beside bf16 autocast, fp32 masters' dtype otherwise
    assert resolve_frozen_dtype("auto", resolve_amp("auto", CPU)) == (torch.bfloat16 if bf16 else torch.float32)
    assert resolve_amp("none", CPU) is None


def test_asking_for_bf16_on_a_cpu_without_it_runs_it_and_says_why_it_is_slow(pretend_cpu):
    pretend_cpu(avx512_bf16=False, amx_bf16=False)
    with pytest.warns(UserWarning, match="avx512_bf16 or amx_bf16.*amp='auto' or 'none'"):
        assert resolve_amp("bf16", CPU) == torch.bfloat16


def test_the_slow_bf16_warning_prints_once_however_many_places_ask(pretend_cpu):
    """A recipe resolves its amp in three places (its device, the engine, predict): one warning, not three."""
    import warnings
    pretend_cpu(avx512_bf16=False, amx_bf16=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's own filter for a UserWarning: once per place it is issued
        resolve_amp("bf16", CPU)
        resolve_amp("bf16", CPU)
        assert resolve_amp("bf16", CPU) == torch.bfloat16
    assert len([w for w in caught if "bf16 dot products" in str(w.message)]) == 1


def test_asking_for_bf16_on_a_cpu_with_it_is_silent(pretend_cpu, recwarn):
    pretend_cpu(avx512_bf16=True)
    assert resolve_amp("bf16", CPU) == torch.bfloat16
    assert not [w for w in recwarn if "bf16" in str(w.message)]


def test_without_torch_get_capabilities_the_flags_come_from_proc_cpuinfo(monkeypatch):
    from pathlib import Path
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    assert hardware.cpu_has_bf16_dot() == ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.mark.parametrize("bf16_cpu", [False, True])
def test_inference_auto_follows_a_model_held_in_bf16(pretend_cpu, bf16_cpu):
    """fp32 activations can meet bf16 weights only under bf16 autocast, so such a model runs in bf16 whatever the
    CPU; an fp32 model gets the CPU's choice."""
    pretend_cpu(avx512_bf16=bf16_cpu, amx_bf16=False)
    fp32 = tiny_model("classification")
    assert inference_amp("auto", fp32, CPU) == (torch.bfloat16 if bf16_cpu else None)
    half = tiny_model("classification").to(torch.bfloat16)
    assert inference_amp("auto", half, CPU) == torch.bfloat16
    assert inference_amp("none", half, CPU) is None  # an explicit choice stands (predict then refuses it)
    data = [{"input_ids": [3, 4, 5, 6]}, {"input_ids": [7, 8]}]
    out = predict(half, data, compile=False)  # the default amp: auto
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="amp='none'"):
        predict(half, data, amp="none", compile=False)
