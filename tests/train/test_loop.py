"""The training engine (llama_ft/train): fast frozen paths, trunk cache, batching, schedules, resume, DDP.

Also a worker: `python tests/train/test_loop.py '<json>'` trains the tiny model and writes the result as JSON;
the SIGKILL/resume and two-process tests start it as a subprocess.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (for tiny), also when run as a worker
from tiny import dataset, tiny_model  # noqa: E402

from llama_ft.model.policies import apply_policy
from llama_ft.train import NonFiniteError, TrainConfig, predict, train
from llama_ft.train.batching import collate, epoch_batches, padding_waste, split_batch
from llama_ft.train.config import resolve_amp
from llama_ft.train.loop import TaskLoss
from llama_ft.train.optim import lr_factor
from llama_ft.train.trunk import find_split

ROOT = Path(__file__).resolve().parents[2]
@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny matrices on a shared 2-core machine: one thread avoids OpenMP spinning against other jobs.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def quick(**kw):
    base = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "amp": "none", "progress": False, "seed": 3}
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------- the frozen fast path
@pytest.mark.parametrize("task", ["classification", "qa"])
@pytest.mark.parametrize("policy", ["head", "last:2", "lora:4"])
def test_fast_path_equals_full_backward(task, policy):
    """Frozen bottom under no_grad + trainable top gives the loss and gradients of a plain forward/backward."""
    model = tiny_model(task)
    apply_policy(model, policy)
    b = collate(dataset(task, 6), 0)
    targets = {k: b[k] for k in ("label", "start_positions", "end_positions") if k in b}
    loss_fast = TaskLoss(model, find_split(model), torch.float32)(b["input_ids"], b["attention_mask"], **targets)
    loss_fast.backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    from llama_ft.train.loop import task_loss
    loss_ref = task_loss(task, model(b["input_ids"], b["attention_mask"]), b["attention_mask"], **targets)
    loss_ref.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert fast.keys() == ref.keys() == {n for n, p in model.named_parameters() if p.requires_grad}
    torch.testing.assert_close(loss_fast, loss_ref, rtol=1e-6, atol=1e-6)
    for n, g in ref.items():
        torch.testing.assert_close(fast[n], g, rtol=1e-5, atol=1e-6)


def test_frozen_blocks_build_no_graph_and_keep_no_grads():
    model = tiny_model()
    seen = {}

    def record(i, out):
        # Built a graph in any forward (the check of the updated weights before a checkpoint runs without one).
        seen[i] = seen.get(i, False) or out.requires_grad

    for i, layer in enumerate(model.model.layers):
        layer.register_forward_hook(lambda m, a, out, i=i: record(i, out))
    train(model, dataset(n=16), quick(policy="last:1", epochs=1, trunk_cache=False))
    assert seen == {0: False, 1: False, 2: False, 3: True}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters()
                         if n.startswith(("model.layers.3.", "model.norm.", "score."))}


@pytest.mark.parametrize("policy", ["last:2", "lora:4", "full"])
def test_gradient_checkpointing_gives_equal_gradients_under_policies(policy):
    grads = []
    for ckpt in (False, True):
        model = tiny_model()
        apply_policy(model, policy) if policy != "lora:4" else (torch.manual_seed(0), apply_policy(model, policy))
        model.model.gradient_checkpointing = ckpt
        model.train()
        b = collate(dataset(n=5), 0)
        TaskLoss(model, find_split(model), torch.float32)(b["input_ids"], b["attention_mask"],
                                                          label=b["label"]).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- frozen-trunk cache
@pytest.mark.parametrize("task", ["classification", "qa"])
@pytest.mark.parametrize("policy", ["head", "last:2"])
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_trunk_cache_gives_the_same_losses(task, policy, amp):
    data = dataset(task, 48)
    runs = []
    for tc in (False, True):
        r = train(tiny_model(task), data, quick(policy=policy, amp=amp, trunk_cache=tc, epochs=3))
        runs.append(r)
    assert runs[0].trunk_cache is None and runs[1].trunk_cache is not None
    assert runs[1].trunk_cache["kind"] == {"head": "pooled" if task == "classification" else "normed",
                                           "last:2": "hidden"}[policy]
    tol = 1e-6 if amp == "none" else 2e-3  # fp32: only batch-shape rounding differs
    np.testing.assert_allclose(runs[1].losses, runs[0].losses, rtol=tol, atol=tol)


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_and_keep_their_names():
    """TrainConfig(compile=True) on CPU (inductor): the same losses as eager under a frozen bottom with the
    trunk cache, gradient checkpointing and padded batches of changing length; names and state dict unchanged."""
    data = dataset("classification", 32)
    cfg = dict(policy="last:2", epochs=2, batch_size=8, grad_checkpointing=True)
    eager, compiled = tiny_model(), tiny_model()
    r0 = train(eager, data, quick(**cfg))
    r1 = train(compiled, data, quick(compile=True, **cfg))
    assert all(layer._compiled_call_impl is not None for layer in compiled.backbone.layers)
    assert r1.trunk_cache is not None
    np.testing.assert_allclose(r1.losses, r0.losses, rtol=1e-4, atol=1e-5)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for (n0, t0), (_, t1) in zip(eager.state_dict().items(), compiled.state_dict().items(), strict=True):
        torch.testing.assert_close(t1, t0, rtol=1e-3, atol=1e-4, msg=n0)


def test_trunk_cache_memory_mapped_file(tmp_path):
    data = dataset("qa", 32)
    ram = train(tiny_model("qa"), data, quick(policy="last:1", trunk_cache=True))
    mm = train(tiny_model("qa"), data, quick(policy="last:1", trunk_cache=True, trunk_cache_ram_gib=0,
                                             output_dir=str(tmp_path)))
    assert ram.trunk_cache["file"] is None and mm.trunk_cache["file"].startswith(str(tmp_path / "tmp"))
    assert not Path(mm.trunk_cache["file"]).exists()  # removed at the end
    assert ram.losses == mm.losses


def test_trunk_cache_refused_when_nothing_frozen():
    with pytest.raises(ValueError, match="trunk_cache"):
        train(tiny_model(), dataset(n=8), quick(policy="full", trunk_cache=True))


# ---------------------------------------------------------------- batching, accumulation, schedules, AMP
def test_length_grouped_batches_deterministic_complete_and_less_padded():
    lengths = np.random.default_rng(0).integers(5, 200, size=1000)
    a = epoch_batches(lengths, 16, seed=1, epoch=0)
    assert [x.tolist() for x in a] == [x.tolist() for x in epoch_batches(lengths, 16, seed=1, epoch=0)]
    assert [x.tolist() for x in a] != [x.tolist() for x in epoch_batches(lengths, 16, seed=1, epoch=1)]
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    plain = epoch_batches(lengths, 16, seed=1, epoch=0, grouped=False)
    waste = [1 - r / p for r, p in (padding_waste(lengths, b) for b in (a, plain))]
    assert waste[0] < 0.1 < waste[1]


def test_split_batch_gives_every_rank_its_share_of_the_same_pieces():
    batch = np.arange(16)
    one = split_batch(batch, 4, 0, 1)
    two = [split_batch(batch, 4, r, 2) for r in range(2)]
    assert [p.tolist() for p in one] == [p.tolist() for p in (two[0][0], two[1][0], two[0][1], two[1][1])]
    assert split_batch(np.arange(1), 4, 0, 2) == []


def test_gradient_accumulation_equals_the_big_batch():
    data = dataset(n=40)
    big = train(tiny_model(), data, quick(policy="last:2", batch_size=8, trunk_cache=False))
    acc = train(tiny_model(), data, quick(policy="last:2", batch_size=2, global_batch=8, trunk_cache=False))
    np.testing.assert_allclose(acc.losses, big.losses, rtol=1e-5)


def test_schedules():
    assert [lr_factor(s, 10, 2, "linear") for s in (0, 1, 2, 6, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    assert lr_factor(2, 10, 2, "cosine") == 1.0 and abs(lr_factor(6, 10, 2, "cosine") - 0.5) < 1e-12
    r = train(tiny_model(), dataset(n=32), quick(policy="head", epochs=1, warmup_ratio=0.5, schedule="cosine"))
    assert r.lrs[0] == 0.0 and max(r.lrs) == pytest.approx(1e-3)


def test_fp16_on_cpu_is_an_error_naming_bf16():
    with pytest.raises(ValueError, match="bf16"):
        resolve_amp("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="bf16"):
        train(tiny_model(), dataset(n=8), quick(amp="fp16", device="cpu"))


def test_bf16_frozen_weights_fp32_masters():
    model = tiny_model()
    train(model, dataset(n=16), quick(policy="last:1", amp="bf16", epochs=1))
    for n, p in model.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), n


def test_weight_decay_groups():
    from llama_ft.train.optim import build_optimizer
    model = tiny_model()
    apply_policy(model, "lora:4")
    opt = build_optimizer(model, 1e-3, 0.1, torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] for p in g["params"]}
    assert decayed == {"score.weight"}


# ---------------------------------------------------------------- predict, evaluation, selection
@pytest.mark.parametrize("task", ["classification", "qa"])
def test_predict_in_dataset_order_matches_single_examples(task):
    model = tiny_model(task).eval()
    data = dataset(task, 13)
    out = predict(model, data, batch_size=4, amp="none")
    for i in (0, 5, 12):
        ids = torch.tensor([data[i]["input_ids"]])
        with torch.no_grad():
            one = model(ids, torch.ones_like(ids))
        if task == "classification":
            torch.testing.assert_close(out[i], one[0], rtol=1e-5, atol=1e-5)
        else:
            assert out[i][0].shape == (len(data[i]["input_ids"]),)
            torch.testing.assert_close(out[i][1], one[1][0], rtol=1e-5, atol=1e-5)


def test_best_checkpoint_selected_and_restored(tmp_path):
    model = tiny_model()
    data, held = dataset(n=32), dataset(n=16, seed=1)
    calls = []

    def eval_fn(m):
        calls.append(m.score.weight.detach().clone())
        return {"fake": [3.0, 5.0, 1.0, 2.0][len(calls) - 1]}

    r = train(model, data, quick(policy="head", epochs=1, eval_every=1, select_metric="fake",
                                 output_dir=str(tmp_path)), eval_set=held, eval_fn=eval_fn)
    assert [m["step"] for m in r.metrics] == [1, 2, 3, 4] and all("eval_loss" in m for m in r.metrics)
    assert r.best_metric == 5.0 and r.best_step == 2
    torch.testing.assert_close(model.score.weight, calls[1])
    assert (tmp_path / "best" / "model.safetensors").is_file()


def test_resume_restores_this_runs_figures_not_an_older_runs_best(tmp_path):
    """A best/ left in the folder by an earlier run with select_metric is not loaded into a resumed run that
    selects nothing; the resumed result keeps the timing of the steps before the checkpoint (tokens/s)."""
    data = dataset(n=32)
    train(tiny_model(), data, quick(policy="head", epochs=1, select_metric="fake", output_dir=str(tmp_path)),
          eval_fn=lambda m: {"fake": 1.0})
    assert (tmp_path / "best" / "model.safetensors").is_file()
    model = tiny_model(seed=1)
    first = train(model, data, quick(policy="head", lr=5e-2, output_dir=str(tmp_path)))
    weights = model.score.weight.detach().clone()
    (tmp_path / "train_log.jsonl").open("a").write('{"step": 9, "loss": 0.')  # a line torn by a crash
    again = tiny_model(seed=1)
    resumed = train(again, data, quick(policy="head", lr=5e-2, output_dir=str(tmp_path), resume=True))
    assert resumed.resumed_from == first.steps and resumed.best_step is None
    torch.testing.assert_close(again.score.weight, weights, rtol=0, atol=0)
    assert resumed.train_seconds == first.train_seconds and resumed.tokens_per_second == first.tokens_per_second
    steps = [json.loads(x)["step"] for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, first.steps + 1))
    with pytest.raises(ValueError, match="amp='none'.*amp='bf16'"):
        train(tiny_model(seed=1), data, quick(policy="head", lr=5e-2, amp="bf16", output_dir=str(tmp_path),
                                              resume=True))


def test_resume_with_a_best_written_after_the_checkpoint_chooses_again(tmp_path):
    """Killed between writing best/ and the checkpoint: best/ is newer than the checkpoint's best step, so it is
    not loaded; the best is chosen again from the evaluations after the resume."""
    from safetensors.torch import load_file, save_file
    data = dataset(n=32)
    cfg = quick(policy="head", epochs=1, eval_every=1, select_metric="fake", output_dir=str(tmp_path))
    scores = iter([3.0, 5.0, 1.0, 2.0])
    first = train(tiny_model(), data, cfg, eval_fn=lambda m: {"fake": next(scores)})
    assert first.best_step == 2
    best = tmp_path / "best" / "model.safetensors"
    save_file(load_file(str(best)), str(best), metadata={"step": "3", "fake": "9.0"})
    model = tiny_model()
    with pytest.warns(UserWarning, match="not at the checkpoint's best step 2"):
        resumed = train(model, data, quick(policy="head", epochs=1, eval_every=1, select_metric="fake",
                                           output_dir=str(tmp_path), resume=True), eval_fn=lambda m: {"fake": 0.0})
    assert resumed.resumed_from == first.steps and resumed.best_step is None


def test_stale_trunk_cache_files_of_dead_runs_are_removed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stale, live = tmp_path / "tmp" / f"trunk_cache_{proc.pid}.bin", tmp_path / "tmp" / "trunk_cache_1.bin"
    stale.parent.mkdir()
    stale.write_bytes(b"0" * 1024)
    live.write_bytes(b"0")  # pid 1 runs: not ours to delete
    r = train(tiny_model(), dataset(n=16), quick(policy="last:2", trunk_cache=True, trunk_cache_ram_gib=0,
                                                   output_dir=str(tmp_path)))
    assert r.trunk_cache["file"] is not None
    assert not stale.exists() and live.exists()


# ---------------------------------------------------------------- observability
def test_jsonl_log_and_result(tmp_path):
    r = train(tiny_model(), dataset(n=32), quick(policy="last:1", output_dir=str(tmp_path)))
    lines = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, r.steps + 1))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "memory", "peak_memory"} <= lines[0].keys()
    assert r.steps == 8 and len(r.losses) == 8 and r.tokens_per_second > 0 and 0 <= r.padding_waste < 0.5
    assert r.real_tokens == 2 * sum(len(x["input_ids"]) for x in dataset(n=32))
    assert 0 < r.trainable_params < r.total_params
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    model = tiny_model()

    def poison(m):
        with torch.no_grad():
            m.score.weight.fill_(float("nan"))
        return {}

    with pytest.raises(NonFiniteError, match="Last good checkpoint: .*checkpoint"):
        train(model, dataset(n=32), quick(policy="head", eval_every=2, checkpoint_every=1,
                                          output_dir=str(tmp_path)), eval_fn=poison)
    last = json.loads((tmp_path / "train_log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and "non_finite" in last
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2


# ---------------------------------------------------------------- resume after SIGKILL, DDP (subprocesses)
def worker(args: dict) -> None:
    torch.set_num_threads(1)
    if args.get("slow"):
        # Slow the run down so the test can kill it mid-epoch, after a checkpoint.
        from llama_ft.train import loop
        inner = loop.train_step

        def slow_step(*a, **k):
            time.sleep(args["slow"])
            return inner(*a, **k)
        loop.train_step = slow_step
    model = tiny_model(args["task"])
    cfg = quick(**args["cfg"])
    r = train(model, dataset(args["task"], args.get("n", 48)), cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args["out"]).write_text(json.dumps({"losses": r.losses, "resumed_from": r.resumed_from,
                                                 "score": model.score.weight.tolist()
                                                 if args["task"] == "classification" else None}))


def run_worker(args: dict, env: dict | None = None, wait: bool = True):
    p = subprocess.Popen([sys.executable, __file__, json.dumps(args)], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    if wait:
        assert p.wait(timeout=120) == 0
    return p


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    cfg = {"policy": "last:2", "epochs": 3, "batch_size": 4, "checkpoint_every": 2, "trunk_cache": True}
    full_out, part_out = tmp_path / "full.json", tmp_path / "part.json"
    run_dir = tmp_path / "run"
    p = run_worker({"task": "classification", "cfg": dict(cfg, output_dir=str(tmp_path / "ref")),
                    "out": str(full_out)}, wait=False)
    k = run_worker({"task": "classification", "slow": 0.15, "out": str(part_out),
                    "cfg": dict(cfg, output_dir=str(run_dir))}, wait=False)
    # 12 steps per epoch: kill in epoch 2, once the checkpoint of step 14 is on disk.
    deadline = time.time() + 90
    while time.time() < deadline:
        # The safetensors metadata names the step; a file caught mid-rename just means poll again.
        st = run_dir / "checkpoint" / "model.safetensors"
        with contextlib.suppress(OSError, safetensors.SafetensorError):
            if int(safetensors.safe_open(str(st), "pt").metadata()["step"]) >= 14:
                break
        time.sleep(0.05)
    assert k.poll() is None, "the run finished before it could be killed"
    os.kill(k.pid, signal.SIGKILL)
    k.wait()
    assert not part_out.exists()
    assert p.wait(timeout=120) == 0
    run_worker({"task": "classification", "out": str(part_out), "cfg": dict(cfg, output_dir=str(run_dir),
                                                                           resume=True)})
    full, part = json.loads(full_out.read_text()), json.loads(part_out.read_text())
    assert part["resumed_from"] >= 14 and part["resumed_from"] % 2 == 0
    assert part["losses"] == full["losses"] and len(full["losses"]) == 36
    assert part["score"] == full["score"]


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


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
