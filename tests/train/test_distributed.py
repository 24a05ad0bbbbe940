"""Two processes under torchrun's environment (llama_ft/train/distributed.py)."""
import json
import os

import numpy as np
import pytest
from tiny import run_worker


def one_and_two_processes(tmp_path, cfg: dict, two_cfg: dict | None = None, port_offset: int = 0) -> tuple[dict, dict]:
    """The results of `cfg` in one process and of `two_cfg` (default: the same) in two under torchrun's
    environment (gloo, CPU)."""
    one = tmp_path / "one.json"
    single = run_worker({"task": "qa", "cfg": cfg, "out": str(one)}, wait=False)
    env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + port_offset + os.getpid() % 1000)}
    two = tmp_path / "two.json"
    procs = [run_worker({"task": "qa", "cfg": two_cfg or cfg, "out": str(two)},
                        env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), wait=False) for r in range(2)]
    assert [q.wait(timeout=240) for q in procs] == [0, 0] and single.wait(timeout=240) == 0
    return json.loads(one.read_text()), json.loads(two.read_text())


def test_two_process_gloo_ddp_equals_one_process(tmp_path):
    cfg = {"policy": "last:2", "epochs": 2, "batch_size": 4, "global_batch": 8, "trunk_cache": False, "amp": "none",
           "device": "cpu"}
    a, b = one_and_two_processes(tmp_path, cfg)
    assert len(a["losses"]) == 12
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_process_ddp_with_compiled_lora_blocks_equals_one_eager_process(tmp_path):
    """TrainConfig(compile=True) under DDP: each process compiles its LoRA blocks in place, DDP's gradient
    hooks still fire through the compiled backward, and the losses are those of one eager process."""
    cfg = {"policy": "lora:4", "epochs": 2, "batch_size": 4, "global_batch": 8, "trunk_cache": False, "amp": "none",
           "device": "cpu", "compile": False}
    a, b = one_and_two_processes(tmp_path, cfg, dict(cfg, compile=True), port_offset=1000)
    assert a["compile"] is None and b["compile"]["at_step"] == 0
    assert len(b["losses"]) == len(a["losses"]) == 12
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-3, atol=1e-4)
