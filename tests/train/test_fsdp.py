"""FSDP2 (llama_ft/train/fsdp.py): two gloo processes sharding the tiny model match one process, resume after
SIGKILL from sharded safetensors, and export a whole model that transformers loads."""
import contextlib
import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from tiny import dataset, run_worker, tiny_model, train_config

from llama_ft.cli.errors import as_flags
from llama_ft.train import TrainConfig, train
from llama_ft.train.fsdp import check_fsdp

BASE = {"epochs": 2, "batch_size": 4, "device": "cpu", "progress": False}


def _pair(args: dict, port_offset: int = 0) -> list:
    """Two ranks of `args` under torchrun's environment, not waited for."""
    env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(30500 + port_offset + os.getpid() % 500)}
    return [run_worker(args, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), wait=False) for r in range(2)]


def _losses_one_and_two(tmp_path, task: str, cfg: dict, export=None) -> tuple[list, list]:
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    single = run_worker({"task": task, "cfg": cfg, "out": str(one)}, wait=False)
    procs = _pair({"task": task, "cfg": dict(cfg, shard="fsdp"), "out": str(two), "export": export})
    assert [q.wait(timeout=300) for q in procs] == [0, 0] and single.wait(timeout=300) == 0
    return json.loads(one.read_text()), json.loads(two.read_text())


def test_two_process_fsdp_full_equals_one_process_and_exports_for_transformers(tmp_path):
    """`full` (embeddings in the root group, every block trainable), fp32: the losses and the weights the model
    ends with equal one process's; the export is gathered into one folder that transformers loads."""
    transformers = pytest.importorskip("transformers")
    cfg = dict(BASE, policy="full", global_batch=8, amp="none", trunk_cache=False)
    a, b = _losses_one_and_two(tmp_path, "classification", cfg, export=str(tmp_path / "export"))
    assert len(a["losses"]) == 12
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b["score"], a["score"], rtol=1e-4, atol=1e-6)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    np.testing.assert_allclose(hf.score.weight.detach().numpy(), b["score"], rtol=1e-6, atol=1e-7)
    ids = torch.tensor([[5, 17, 42, 9]])
    assert torch.isfinite(hf(ids).logits).all()


def test_two_process_fsdp_lora_bf16_with_accumulation_and_clipping_equals_one_process(tmp_path):
    """lora:4 (fp32 adapters next to bf16 frozen weights in one FSDP group), bf16 weights gathered, fp32
    gradient reduction, 2 micro-batches per process and step (set_requires_gradient_sync), a clipping norm."""
    cfg = dict(BASE, policy="lora:4", global_batch=16, amp="bf16", trunk_cache=False, max_grad_norm=0.01)
    a, b = _losses_one_and_two(tmp_path, "classification", cfg)
    assert len(a["losses"]) == 6
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=2e-3, atol=1e-3)


def test_fsdp_sigkill_then_resume_matches_uninterrupted(tmp_path):
    """last:2 with the trunk cache (the frozen bottom runs inside FSDP's root), bf16. Both ranks killed after a
    sharded checkpoint; resumed from it, the run's losses and weights equal an uninterrupted two-process run's,
    and the checkpoint holds no pickle (sharded/ is safetensors with JSON headers, no DCP .metadata)."""
    cfg = dict(BASE, policy="last:2", global_batch=8, amp="bf16", epochs=2, checkpoint_every=2, trunk_cache=True)
    run_dir = tmp_path / "run"
    full = _pair({"task": "classification", "cfg": dict(cfg, shard="fsdp", output_dir=str(tmp_path / "ref")),
                  "out": str(tmp_path / "full.json")}, port_offset=1000)
    killed = _pair({"task": "classification", "slow": 0.3, "out": str(tmp_path / "part.json"),
                    "cfg": dict(cfg, shard="fsdp", output_dir=str(run_dir))}, port_offset=2000)
    deadline = time.time() + 240
    while time.time() < deadline:  # 6 steps per epoch: kill once the checkpoint of step 4 is in place
        with contextlib.suppress(OSError, ValueError, KeyError):
            if json.loads((run_dir / "checkpoint" / "state.json").read_text())["step"] >= 4:
                break
        time.sleep(0.05)
    assert all(k.poll() is None for k in killed), "the run finished before it could be killed"
    for k in killed:
        os.kill(k.pid, signal.SIGKILL)
        k.wait()
    assert [q.wait(timeout=300) for q in full] == [0, 0]
    ckpt = run_dir / "checkpoint"
    files = sorted(p.name for p in (ckpt / "sharded").iterdir())
    assert files and all(f.endswith(".safetensors") for f in files), files
    resumed = _pair({"task": "classification", "out": str(tmp_path / "part.json"),
                     "cfg": dict(cfg, shard="fsdp", output_dir=str(run_dir), resume=True)}, port_offset=3000)
    assert [q.wait(timeout=300) for q in resumed] == [0, 0]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("full.json", "part.json"))
    assert b["resumed_from"] >= 4 and b["resumed_from"] % 2 == 0
    assert b["losses"] == a["losses"] and len(a["losses"]) == 12
    assert b["score"] == a["score"]


def test_fsdp_refuses_one_process_fp16_and_compile_naming_shard():
    with pytest.raises(ValueError, match="shard='fsdp'.*one.*torchrun.*shard='none'") as e:
        train(tiny_model(), dataset(n=8), train_config(policy="head", shard="fsdp", device="cpu"))
    assert "--shard 'none'" in as_flags(str(e.value))  # what the recipes print
    with pytest.raises(ValueError, match="shard='fsdp' with amp='fp16'.*amp='bf16'"):
        check_fsdp(2, torch.float16, "auto")
    with pytest.raises(ValueError, match="shard='fsdp' with compile=True.*compile=False"):
        check_fsdp(2, torch.bfloat16, True)
    check_fsdp(2, torch.bfloat16, "auto")
    with pytest.raises(ValueError, match="TrainConfig.shard='zero3'; use `none` or `fsdp`"):
        TrainConfig(shard="zero3")
