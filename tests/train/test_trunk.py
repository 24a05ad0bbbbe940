"""The frozen-trunk cache (llama_ft/train/trunk.py): same losses, memory-mapped storage, refusal, stale files."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import dataset, tiny_model, train_config

from llama_ft.train import train


@pytest.mark.parametrize("task", ["classification", "qa"])
@pytest.mark.parametrize("policy", ["head", "last:2"])
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_trunk_cache_gives_the_same_losses(task, policy, amp):
    data = dataset(task, 48)
    runs = []
    for tc in (False, True):
        r = train(tiny_model(task), data, train_config(policy=policy, amp=amp, trunk_cache=tc, epochs=3))
        runs.append(r)
    assert runs[0].trunk_cache is None and runs[1].trunk_cache is not None
    assert runs[1].trunk_cache["kind"] == {"head": "pooled" if task == "classification" else "normed",
                                           "last:2": "hidden"}[policy]
    # fp32: only the rounding of the matmuls' blocking differs (batch shapes): up to 1.5e-6 relative after 3
    # epochs with AVX2's fp32 kernels (a Zen 3 EPYC), under 1e-6 with AVX-512's.
    tol = 1e-5 if amp == "none" else 2e-3
    np.testing.assert_allclose(runs[1].losses, runs[0].losses, rtol=tol, atol=tol)


def test_trunk_cache_memory_mapped_file(tmp_path):
    data = dataset("qa", 32)
    ram = train(tiny_model("qa"), data, train_config(policy="last:1", trunk_cache=True))
    mm = train(tiny_model("qa"), data, train_config(policy="last:1", trunk_cache=True, trunk_cache_ram_gib=0,
                                             output_dir=str(tmp_path)))
    assert ram.trunk_cache["file"] is None and mm.trunk_cache["file"].startswith(str(tmp_path / "tmp"))
    assert not Path(mm.trunk_cache["file"]).exists()  # removed at the end
    assert ram.losses == mm.losses


def test_trunk_cache_refused_when_nothing_frozen():
    with pytest.raises(ValueError, match="trunk_cache"):
        train(tiny_model(), dataset(n=8), train_config(policy="full", trunk_cache=True))


def test_stale_trunk_cache_files_of_dead_runs_are_removed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stale, live = tmp_path / "tmp" / f"trunk_cache_{proc.pid}.bin", tmp_path / "tmp" / "trunk_cache_1.bin"
    stale.parent.mkdir()
    stale.write_bytes(b"0" * 1024)
    live.write_bytes(b"0")  # pid 1 runs: not ours to delete
    r = train(tiny_model(), dataset(n=16), train_config(policy="last:2", trunk_cache=True, trunk_cache_ram_gib=0,
                                                   output_dir=str(tmp_path)))
    assert r.trunk_cache["file"] is not None
    assert not stale.exists() and live.exists()
