"""TrainConfig.compile: compiled training equals eager training, and `auto` compiles only runs long enough to
repay the warm-up."""
import numpy as np
import pytest
import torch
from tiny import dataset, tiny_model

from llama_ft.model.policies import apply_policy
from llama_ft.train import TrainConfig, predict, train
from llama_ft.train import compile as compile_mod
from llama_ft.train.compile import (InferenceCompiler, auto_min_seconds, compile_blocks, compile_pays, frames_compiled,
                                    is_compiled)



def eager_backend(monkeypatch):
    """The engine's compiled blocks traced by dynamo with the `eager` backend: its guards decide the graphs, which
    these tests count, without the seconds inductor takes to generate code."""
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, **kw: compile_module(self, **{**kw, "backend": "eager", "mode": None}))


def run(compile, task="qa", **kw):
    model = tiny_model(task)
    base = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "amp": "bf16", "progress": False, "seed": 3,
            "compile": compile}
    base.update(kw)
    return model, train(model, dataset(task, n=40), TrainConfig(**base))


def test_auto_rule():
    assert compile_pays(2.0, 200)          # 400 s of eager steps left: the warm-up pays
    assert not compile_pays(0.05, 100)     # a 5 s run: it never would
    assert compile_pays(1.0, 10, min_seconds=5.0)


def test_auto_projects_the_rest_of_the_run_per_token():
    """The probe steps' time per token times the epoch's mean tokens per step: an SST-2 run's first two batches
    (152 and 939 tokens of a mean 400) say 0.21 s a step, not their mean 0.29 s."""
    from llama_ft.train.compile import projected_step_seconds
    probe = [(0.128, 152), (0.457, 939)]
    assert projected_step_seconds(probe, 400.0) == pytest.approx(0.585 / 1091 * 400)
    assert projected_step_seconds(probe, 0.0) == pytest.approx(0.2925)           # no token counts: the mean
    assert projected_step_seconds([(1.0, 0), (2.0, 0)], 400.0) == pytest.approx(1.5)


def test_the_loop_hands_the_probe_its_tokens(monkeypatch):
    seen = []
    real = compile_mod.projected_step_seconds
    monkeypatch.setattr(compile_mod, "projected_step_seconds", lambda probe, mean: seen.append((probe, mean))
                        or real(probe, mean))
    data = dataset("classification", n=40)
    run("auto", task="classification", epochs=1)
    (probe, mean), = seen
    lengths = sorted(len(d["input_ids"]) for d in data)
    assert all(0 < t <= 8 * lengths[-1] for _, t in probe) and lengths[0] * 8 <= mean <= lengths[-1] * 8


def test_auto_threshold_follows_the_device():
    """A GPU compiles in seconds (BENCHMARKS.md, "GPU"), so shorter runs repay it there than on a CPU; a device
    not measured gets the CPU's cautious threshold."""
    assert auto_min_seconds("cuda") < auto_min_seconds("cpu") == auto_min_seconds("mps")
    assert TrainConfig().compile_min_seconds is None  # None: the device's


def test_auto_leaves_a_short_run_eager():
    model, res = run("auto", epochs=1)
    assert not is_compiled(model) and res.compile is None


@pytest.mark.slow
def test_compiled_training_equals_eager_with_lora_trunk_cache_and_checkpointing():
    """LoRA on the top blocks over a cached frozen bottom, recomputed in backward: same losses as eager."""
    kw = {"policy": "lora:4:last:2", "grad_checkpointing": True, "trunk_cache": True}
    _, eager = run(False, **kw)
    model, compiled = run(True, **kw)
    assert compiled.compile["at_step"] == 0  # frames_compiled may be 0: an earlier test compiled the same graphs
    assert compiled.compile["cuda_graphs"] is False  # a CPU run: `auto` records none
    assert compiled.trunk_cache is not None
    assert not is_compiled(model)  # eager again for whatever the caller runs next
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=2e-2, atol=2e-2)


def test_compiled_lora_blocks_share_one_graph_whatever_the_depth():
    """The blocks' adapters are stacked by position (llama_ft.model.lora.project), not by module identity: every
    block runs the graphs the first one compiled. A guard on identity would compile a graph per block."""
    import torch._dynamo

    ids = torch.randint(3, 101, (4, 12), generator=torch.Generator().manual_seed(0))
    frames = []
    for layers in (2, 4):
        torch._dynamo.reset()
        model = tiny_model("qa", num_hidden_layers=layers)
        apply_policy(model, "lora:4")
        for layer in model.backbone.layers:  # dynamo's guards decide the graphs: no need for inductor's code
            layer.compile(backend="eager")
        before = frames_compiled()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            start, end = model(ids, torch.ones_like(ids))
        (start.float().sum() + end.float().sum()).backward()
        frames.append(frames_compiled() - before)
    assert frames[0] == frames[1] >= 1


@pytest.mark.slow
def test_compiled_cpu_training_compiles_each_block_variant_once_over_changing_lengths_and_sizes(monkeypatch):
    """On a CPU the blocks compile with dynamic lengths and batch sizes from the first step (compile.DYNAMIC):
    micro-batches that change length and size (the token cap halves the long ones) compile the two block variants
    (the first trainable block's input needs no gradient, the others' do) once each, where torch's default compiles
    them again for each dimension that changes. Dynamo's guards decide the graphs: no need for inductor's code."""
    import torch._dynamo

    eager_backend(monkeypatch)
    frames = {}
    for dynamic in (True, None):
        monkeypatch.setitem(compile_mod.DYNAMIC, "cpu", dynamic)
        torch._dynamo.reset()
        _, res = run(True, epochs=1, policy="lora:4", micro_batch_tokens=120)
        frames[dynamic] = res.compile["frames_compiled"]
    assert frames[True] == 2 < frames[None]


@pytest.mark.slow
def test_compiled_cpu_training_runs_its_shortest_micro_batches_in_the_same_graphs(monkeypatch):
    """Micro-batches of 1 to 3 tokens are padded to 4 (compile.CPU_MIN_LENGTH): unpadded, a single position (SDPA)
    and query blocks of one row (dynamo specializes sizes 0 and 1) compiled both block variants twice more. The
    padding changes no loss."""
    import random

    import torch._dynamo

    eager_backend(monkeypatch)
    r = random.Random(0)
    data = [{"input_ids": [r.randrange(3, 101) for _ in range(n)], "label": n % 2} for n in [1, 2, 3] * 4 + [8] * 12]
    cfg = {"epochs": 1, "batch_size": 3, "lr": 1e-3, "amp": "bf16", "progress": False, "seed": 3, "policy": "lora:4"}
    torch._dynamo.reset()
    compiled = train(tiny_model("classification"), data, TrainConfig(**cfg, compile=True))
    eager = train(tiny_model("classification"), data, TrainConfig(**cfg, compile=False))
    assert compiled.compile["frames_compiled"] == 2
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=1e-2, atol=1e-3)


def shapes_compiled_and_eager(monkeypatch, length: int, n: int, batch_size: int):
    """`n` random examples of `length` tokens through train() (`last:1`, bf16), compiled (dynamo's eager backend)
    and eagerly: (compiled result, its micro-batches' [B, T], eager result, its [B, T])."""
    import random

    import torch._dynamo

    from llama_ft.train import loop
    eager_backend(monkeypatch)
    shapes, build = [], loop.micro_batch
    monkeypatch.setattr(loop, "micro_batch", lambda *a, **kw: (lambda b: shapes.append(tuple(b["attention_mask"].shape))
                                                               or b)(build(*a, **kw)))
    r = random.Random(0)
    data = [{"input_ids": [r.randrange(3, 101) for _ in range(length)], "label": i % 2} for i in range(n)]
    cfg = {"epochs": 1, "batch_size": batch_size, "lr": 1e-3, "amp": "bf16", "progress": False, "seed": 3,
           "policy": "last:1", "trunk_cache": False}
    torch._dynamo.reset()
    compiled = train(tiny_model("classification"), data, TrainConfig(**cfg, compile=True))
    compiled_shapes = list(shapes)
    shapes.clear()
    eager = train(tiny_model("classification"), data, TrainConfig(**cfg, compile=False))
    return compiled, compiled_shapes, eager, shapes


def test_compiled_cpu_blocks_take_at_most_4096_tokens_a_micro_batch(monkeypatch):
    """Inductor's CPU reductions over more than 4,096 elements are compiled another way, behind a guard: the loop
    splits a compiled bf16 micro-batch above compile.CPU_MAX_TOKENS (64 x 80 tokens here) as it does for
    TrainConfig's caps, and the gradient stays the same (the losses equal an eager run's, which does not split)."""
    compiled, shapes, eager, eager_shapes = shapes_compiled_and_eager(monkeypatch, 80, 128, 64)
    assert shapes and all(b * t <= 4096 for b, t in shapes) and (32, 80) in shapes
    assert (64, 80) in eager_shapes
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=1e-2, atol=1e-3)


def test_compiled_cpu_blocks_count_the_4096_tokens_after_rounding_lengths_up(monkeypatch):
    """On a CPU with AMX, compiled micro-batches of 128 tokens or more are padded to a multiple of 16: 26 examples
    of 150 tokens (3,900) become 26 x 160 = 4,160 tokens, over compile.CPU_MAX_TOKENS, so the loop splits them
    (counting the rounded length) and the losses stay an eager run's."""
    monkeypatch.setattr(compile_mod, "machine_kind", lambda device_type: "cpu-amx")  # the rounding, on any CPU
    compiled, shapes, eager, _ = shapes_compiled_and_eager(monkeypatch, 150, 52, 26)
    assert shapes and all(b * t <= 4096 for b, t in shapes) and (13, 160) in shapes
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=1e-2, atol=1e-3)


def test_compiled_blocks_keep_a_square_first_micro_batchs_sizes_apart_and_restore_torchs_duck_sizing(monkeypatch):
    """A first micro-batch of 8 examples of 8 tokens: with dynamo's duck sizing its batch size and length share
    one symbol, and the last micro-batch (3 x 8) compiled both block variants again. compile.DUCK_SHAPE keeps them
    apart while the blocks run compiled, for training and for an inference pass, and torch's setting is back
    after each."""
    import random

    import torch._dynamo
    import torch.fx.experimental._config as fx_config

    from llama_ft.train.compile import InferenceCompiler
    eager_backend(monkeypatch)
    r = random.Random(0)
    data = [{"input_ids": [r.randrange(3, 101) for _ in range(8)], "label": i % 2} for i in range(11)]
    cfg = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "amp": "bf16", "progress": False, "seed": 3,
           "policy": "lora:4", "compile": True, "length_grouping": False}
    before = fx_config.use_duck_shape
    frames = {}
    for duck in (False, True):
        monkeypatch.setattr(compile_mod, "DUCK_SHAPE", duck)
        torch._dynamo.reset()
        frames[duck] = train(tiny_model("classification"), data, TrainConfig(**cfg)).compile["frames_compiled"]
        assert fx_config.use_duck_shape == before
    assert frames[False] == 2 < frames[True]
    monkeypatch.setattr(compile_mod, "DUCK_SHAPE", False)
    seen = []
    with InferenceCompiler(tiny_model("classification"), True, 0):
        seen.append(fx_config.use_duck_shape)
    assert seen == [False] and fx_config.use_duck_shape == before


@pytest.mark.slow
def test_compiled_training_partitions_its_graphs_under_the_activation_budget_and_restores_torchs(monkeypatch):
    """The budget has to hold when a block's joint graph is split into forward and backward, which happens at its
    first compiled call inside the training step, not when the blocks are wrapped; after the run torch's own
    setting is back."""
    import torch._dynamo
    import torch._functorch.config as functorch_config
    import torch._inductor.compile_fx as compile_fx

    seen = []
    partition = compile_fx.min_cut_rematerialization_partition
    monkeypatch.setattr(compile_fx, "min_cut_rematerialization_partition", lambda *a, **kw: seen.append(
        functorch_config.activation_memory_budget) or partition(*a, **kw))
    torch._dynamo.reset()  # graphs an earlier test compiled would be reused without partitioning
    before = functorch_config.activation_memory_budget
    # A hit in AOTAutograd's cache would hand back the forward and backward already split, without calling the
    # partitioner (these graphs bypass that cache today: its counters say `autograd_cache_bypass`).
    with functorch_config.patch(enable_autograd_cache=False):
        _, res = run(True, epochs=1, policy="lora:4")
    assert res.compile is not None and seen
    assert set(seen) == {compile_mod.ACTIVATION_MEMORY_BUDGET["cpu"]} != {before}
    assert functorch_config.activation_memory_budget == before


@pytest.mark.slow
def test_auto_compiles_after_the_probe_steps_when_the_run_is_long_enough(monkeypatch):
    # The device's own threshold (TrainConfig.compile_min_seconds left at None), lowered so this run passes it.
    monkeypatch.setitem(compile_mod.AUTO_MIN_SECONDS, "cpu", 0.0)
    model, res = run("auto", task="classification", policy="full")
    assert res.compile["at_step"] == 2 and res.compile["warmup_seconds"] is not None
    _, eager = run(False, task="classification", policy="full")
    np.testing.assert_allclose(res.losses, eager.losses, rtol=2e-2, atol=2e-2)


@pytest.mark.slow
def test_evaluations_and_checks_between_compiled_steps_compile_no_graphs_of_their_own(tmp_path, monkeypatch):
    """The no-grad forwards between steps (evaluation, the loss after an update) run the blocks eagerly: they
    would otherwise compile graphs of their own and use up dynamo's recompile limit mid-run. Each evaluation
    also merges the adapters into the blocks for its pass and puts them back, which must not recompile the
    training graphs either."""
    import torch._dynamo

    from llama_ft.train import loop
    monkeypatch.setattr(loop, "MERGE_MIN_TOKENS", 1)
    held = dataset("qa", n=12, seed=7)

    def predicted_windows(m):
        return {"windows": len(predict(m, held, compile=False))}

    frames = []
    for every in (None, 1):
        torch._dynamo.reset()
        model = tiny_model("qa")
        cfg = TrainConfig(policy="lora:4", epochs=1, batch_size=8, lr=1e-3, amp="bf16", progress=False, seed=3,
                          compile=True, eval_every=every, checkpoint_every=every,
                          output_dir=str(tmp_path / str(every)))
        res = train(model, dataset("qa", n=32), cfg, eval_set=held if every else None,
                    eval_fn=predicted_windows if every else None)
        assert not every or len(res.metrics) == 4
        frames.append(res.compile["frames_compiled"])
    assert frames[0] == frames[1] > 0
    # The blocks' input variants (first block's input without grad, masks, lengths, sizes) stay compiled: dynamo's
    # default limit of 8 graphs would otherwise switch them to eager in mid-run.
    assert torch._dynamo.config.recompile_limit >= 64


def test_inference_auto_compiles_when_the_rest_of_the_pass_would_take_long_enough():
    model = tiny_model("qa")
    with InferenceCompiler(model, "auto", total_tokens=1000, min_seconds=60.0) as c:
        c.after_batch(seconds=1.0, tokens=100)   # 900 tokens left at 100 a second: 9 s, the warm-up would not pay
        assert not c.compiled and not is_compiled(model)
        c.after_batch(seconds=100.0, tokens=100)  # only the first batch decides
        assert not c.compiled
    with InferenceCompiler(model, "auto", total_tokens=1000, min_seconds=5.0) as c:
        c.after_batch(seconds=1.0, tokens=100)
        assert c.compiled and is_compiled(model)
    assert not is_compiled(model)  # eager again afterwards
    with pytest.raises(ValueError, match="compile='yes'"):
        InferenceCompiler(model, "yes", 10)


@pytest.mark.parametrize("amx, compiles", [(True, True), (False, False)])
def test_inference_auto_threshold_follows_the_cpu_kind(pretend_cpu, amx, compiles):
    """A pass projected at 100 s eagerly compiles on a CPU with AMX (where the warm-up is short and the gain large)
    and stays eager on one without it (where it would not repay a fresh machine's warm-up)."""
    pretend_cpu(amx_bf16=amx)
    assert compile_mod.machine_kind("cpu") == ("cpu-amx" if amx else "cpu")
    assert compile_mod.machine_kind("cuda") == "cuda"
    model = tiny_model("qa")
    with InferenceCompiler(model, "auto", total_tokens=1100) as c:
        c.after_batch(seconds=10.0, tokens=100)  # 1,000 tokens left at 10 a second: 100 s
        assert c.compiled == compiles == is_compiled(model)
    assert not is_compiled(model)


def test_inference_auto_weighs_a_short_warm_up_once_the_process_has_compiled_a_pass(pretend_cpu):
    """A pass projected at 30 s eagerly stays eager in a fresh process (a fresh warm-up would not pay) and compiles
    once an earlier pass has compiled the blocks (the fine-tuned scoring pass after the random-head one)."""
    pretend_cpu(amx_bf16=True)
    model = tiny_model("qa")
    with InferenceCompiler(model, "auto", total_tokens=400) as c:
        c.after_batch(seconds=10.0, tokens=100)  # 300 tokens left at 10 a second: 30 s
        assert not c.compiled
    with InferenceCompiler(model, True, total_tokens=400) as c:
        assert c.compiled
    with InferenceCompiler(model, "auto", total_tokens=400) as c:
        c.after_batch(seconds=10.0, tokens=100)
        assert c.compiled and is_compiled(model)
    assert not is_compiled(model)
    assert compile_mod.auto_min_inference_seconds("cpu", again=True) < compile_mod.auto_min_inference_seconds("cpu")


def test_a_torch_without_get_capabilities_reads_the_cpu_flags(monkeypatch):
    from pathlib import Path
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    assert compile_mod.machine_kind("cpu") == ("cpu-amx" if "amx_bf16" in flags else "cpu")


@pytest.mark.slow
def test_compiled_predict_equals_eager_over_every_length_with_one_graph_and_restores_the_blocks():
    """Dynamic shapes: batches of every length and size share one graph (right-padded: no mask), without a
    graph break (a symbolic `is_causal` once broke every block in two around SDPA)."""
    import torch._dynamo
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    data = dataset("qa", n=40, max_len=30)
    model = tiny_model("qa")
    eager = predict(model, data, batch_size=6, compile=False)
    before = frames_compiled()
    compiled = predict(model, data, batch_size=6, compile=True)
    assert 1 <= frames_compiled() - before <= 2  # one, and at most one more for a batch of one
    assert not torch._dynamo.utils.counters["graph_break"]
    assert not is_compiled(model)
    for (s0, e0), (s1, e1) in zip(eager, compiled):
        np.testing.assert_allclose(s1.numpy(), s0.numpy(), rtol=2e-2, atol=2e-2)
        np.testing.assert_allclose(e1.numpy(), e0.numpy(), rtol=2e-2, atol=2e-2)
    compile_blocks(model)  # training's compiled blocks (the caller's state) come back as they were
    impls = [layer._compiled_call_impl for layer in model.backbone.layers]
    predict(model, data[:6], batch_size=6, compile=True)
    assert [layer._compiled_call_impl for layer in model.backbone.layers] == impls


@pytest.mark.parametrize("amx", [True, False])
def test_compiled_bf16_cpu_blocks_pad_long_micro_batches_to_a_multiple_of_16_with_amx(monkeypatch, amx):
    """Rounded lengths repeat, so oneDNN reuses its kernels (BENCHMARKS.md, session 33): on a CPU with AMX, once the
    blocks compile, a bf16 micro-batch of 128 tokens or more is padded up to a multiple of 16; shorter ones (but the
    shortest, below), fp32, eager blocks and other CPUs keep the longest example's length; CUDA graphs take theirs."""
    from llama_ft.train import compile as compile_mod
    from llama_ft.train.graphs import LENGTH_MULTIPLE
    monkeypatch.setattr(compile_mod, "cpu_has_amx", lambda: amx)
    compiler = compile_mod.Compiler(tiny_model(), False, 0.0, lambda s: s)
    assert compiler.length_multiple(200, torch.bfloat16) == 1  # eager blocks
    assert compiler.token_cap(None, torch.bfloat16) is None
    compiler._start(0)
    try:
        assert compiler.length_multiple(200, torch.bfloat16) == (16 if amx else 1)
        assert compiler.length_multiple(128, torch.bfloat16) == (16 if amx else 1)
        assert compiler.length_multiple(127, torch.bfloat16) == 1
        assert compiler.length_multiple(200, None) == 1
        # On any CPU, 1 to 3 tokens are padded to 4 (compile.CPU_MIN_LENGTH), 4 and more are not.
        assert [compiler.length_multiple(n, torch.bfloat16) for n in (1, 3, 4, 5)] == [4, 4, 1, 1]
        assert compiler.length_multiple(3, None) == 1
        # Compiled bf16 CPU blocks take at most 4,096 tokens a micro-batch (compile.CPU_MAX_TOKENS).
        assert [compiler.token_cap(c, torch.bfloat16) for c in (None, 2560, 8192)] == [4096, 2560, 4096]
        assert compiler.token_cap(8192, None) == 8192
        compiler.graphs = True
        assert compiler.length_multiple(20, torch.bfloat16) == LENGTH_MULTIPLE
    finally:
        compiler.finish()


def test_the_loop_pads_each_micro_batch_to_the_compilers_multiple_and_logs_that_padding(monkeypatch, tmp_path):
    """The loop asks Compiler.length_multiple for each micro-batch's longest example and pads it up to that
    multiple: the step log's padded tokens count the rounding (an eager run, the multiple stubbed)."""
    import json

    from llama_ft.train import compile as compile_mod
    asked = []
    monkeypatch.setattr(compile_mod.Compiler, "length_multiple",
                        lambda self, longest, amp_dtype: asked.append(longest) or 16)
    data = dataset("classification", n=16)
    model, lengths_seen = tiny_model(), []
    model.backbone.layers[0].register_forward_pre_hook(lambda m, args: lengths_seen.append(args[0].shape[1]))
    train(model, data, TrainConfig(epochs=1, batch_size=8, amp="bf16", progress=False, seed=3, compile=False,
                                   policy="last:2", trunk_cache=False, output_dir=str(tmp_path)))
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    padded = [r["padded_tokens"] for r in log]
    assert all(p % 16 == 0 for p in padded) and sum(padded) > sum(r["real_tokens"] for r in log)
    assert lengths_seen and all(t % 16 == 0 for t in lengths_seen)  # the batches the blocks ran
    assert set(asked) <= {len(d["input_ids"]) for d in data} and len(asked) >= 2 * len(log)


def recording_bars(monkeypatch, module) -> list:
    """`module`'s tqdm replaced by one whose bars keep, in order, each postfix they were told and each update (what
    a bar said while each step or batch ran), in the list returned."""
    from tqdm.auto import tqdm
    events: list = []

    class Bar(tqdm):
        def set_postfix_str(self, s="", refresh=True):
            events.append(("say", s))
            return super().set_postfix_str(s, refresh)

        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            events.append(("say", ", ".join(f"{k}={v}" for k, v in kwargs.items())))
            return super().set_postfix(ordered_dict, refresh, **kwargs)

        def update(self, n=1):
            events.append(("update", n))
            return super().update(n)
    monkeypatch.setattr(module, "tqdm", Bar)
    return events


def showing_at_each_update(events: list) -> list[str]:
    """For each update, the postfix last said before it (the one before stays up when nothing was said)."""
    out, now = [], ""
    for kind, v in events:
        if kind == "say":
            now = v
        else:
            out.append(now)
    return out


def test_the_bars_say_when_a_batch_compiles(monkeypatch):
    """A pass whose first batch compiles (compile=True) says so before it and stops saying so after it; one that
    `auto` compiles after its first batch says so for the second. The trunk cache's pass does the same."""
    from llama_ft.train import apply_training_policy, loop, trunk
    from llama_ft.train.compile import COMPILING
    eager_backend(monkeypatch)
    events = recording_bars(monkeypatch, loop)
    model, data = tiny_model("qa"), dataset("qa", n=24)
    predict(model, data, batch_size=8, compile=True, progress="score")
    assert events[:2] == [("say", COMPILING), ("say", "")]
    assert [e[0] for e in events[2:]] == ["update"] * 3   # said while the first batch ran, then cleared
    events = recording_bars(monkeypatch, loop)
    monkeypatch.setattr(compile_mod, "auto_min_inference_seconds", lambda *a, **k: 0.0)
    predict(model, data, batch_size=8, compile="auto", progress="score")
    assert events == [("say", COMPILING), ("update", 8), ("say", ""), ("update", 8), ("update", 8)]
    events = recording_bars(monkeypatch, trunk)
    apply_training_policy(model, TrainConfig(policy="last:1", progress=False))
    trunk.TrunkCache(model, trunk.find_split(model), data, np.array([len(d["input_ids"]) for d in data]),
                     batch_size=8, device=torch.device("cpu"), amp_dtype=None, dtype=torch.float32,
                     ram_bytes=float("inf"), tmp_dir=None, show_progress=True, compile=True)
    assert events[:2] == [("say", COMPILING), ("say", "")]   # the first batch ran between the two
    assert ("say", COMPILING) not in events[2:]


def test_the_training_bar_says_which_step_compiles(monkeypatch):
    """compile=True: the bar says COMPILING before the first step and its figures replace it after that step
    (log_every would otherwise keep the word up for ten steps); `auto` says it after the probe steps, for the
    step that compiles."""
    from llama_ft.train import loop
    from llama_ft.train.compile import AUTO_PROBE_STEPS, COMPILING
    eager_backend(monkeypatch)
    for mode, compiling_step in ((True, 1), ("auto", AUTO_PROBE_STEPS + 1)):
        events = recording_bars(monkeypatch, loop)
        run(mode, progress=True, compile_min_seconds=0.0, epochs=1)
        said = showing_at_each_update(events)
        assert said[compiling_step - 1] == COMPILING, (mode, said)
        assert all(s != COMPILING for i, s in enumerate(said) if i != compiling_step - 1), (mode, said)
        # The figures come back right after the step that compiled, though log_every is 10.
        after = events[[i for i, e in enumerate(events) if e[0] == "update"][compiling_step - 1] + 1]
        assert after[0] == "say" and after[1].startswith("loss="), (mode, events)
