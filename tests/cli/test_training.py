"""llama_ft/cli/training.py: the recipes' device and autocast follow the engine's rules (plus the study's fp16
on CUDA), named as strings everywhere."""
import pytest
import torch

from llama_ft.cli.errors import as_flags
from llama_ft.cli.training import device_and_amp


@pytest.mark.parametrize("bf16_cpu", [True, False])
def test_a_cpu_runs_bf16_by_default_where_it_computes_it_and_names_are_strings(pretend_cpu, bf16_cpu):
    pretend_cpu(avx512_bf16=bf16_cpu, amx_bf16=False)
    amp = "bf16" if bf16_cpu else "none"
    if not torch.cuda.is_available():
        assert device_and_amp("auto", "auto") == ("cpu", amp)
    assert device_and_amp("cpu", "auto", study=True) == ("cpu", amp)  # the study's fp16 is for CUDA only
    assert device_and_amp("cpu", "none") == ("cpu", "none")


def test_an_amp_the_device_cannot_run_is_refused_with_its_flag():
    with pytest.raises(ValueError) as e:
        device_and_amp("cpu", "fp16")
    assert as_flags(str(e.value)).startswith("--amp 'fp16' needs CUDA")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_study_preset_trains_fp16_on_cuda():
    assert device_and_amp("cuda", "auto", study=True) == ("cuda", "fp16")
    assert device_and_amp("cuda", "auto")[1] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
