"""Two processes under torchrun's environment (llama_ft/train/distributed.py)."""
import json
import os

import numpy as np
from tiny import run_worker


def test_two_process_gloo_ddp_equals_one_process(tmp_path):
    cfg = {"policy": "last:2", "epochs": 2, "batch_size": 4, "global_batch": 8, "trunk_cache": False, "amp": "none",
           "device": "cpu"}
    one = tmp_path / "one.json"
    single = run_worker({"task": "qa", "cfg": cfg, "out": str(one)}, wait=False)
    env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    two = tmp_path / "two.json"
    procs = [run_worker({"task": "qa", "cfg": cfg, "out": str(two)},
                        env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), wait=False) for r in range(2)]
    assert [q.wait(timeout=120) for q in procs] == [0, 0] and single.wait(timeout=120) == 0
    a, b = json.loads(one.read_text())["losses"], json.loads(two.read_text())["losses"]
    assert len(a) == 12
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
