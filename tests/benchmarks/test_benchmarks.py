"""The benchmark suite (benchmarks/): FLOP counting, padding waste, run folders, and a smoke run of the suite."""
import json

import numpy as np
import pytest
import torch

from benchmarks import e2e, mfu
from benchmarks.curves import padding_table
from benchmarks.run import main, plan_amps
from benchmarks.train_step import config


def test_flops_full_is_six_p_plus_attention():
    cfg = config("tiny")
    seq = 32
    layer_p = (2 * cfg.hidden_size * cfg.num_attention_heads * cfg.head_dim
               + 2 * cfg.hidden_size * cfg.num_key_value_heads * cfg.head_dim
               + 3 * cfg.hidden_size * cfg.intermediate_size)
    attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq  # PaLM's count
    head = 6 * cfg.hidden_size * 2 / seq  # the score layer on one pooled token per sequence
    f = mfu.step_flops(cfg, "full", seq)
    assert f["matmul_params"] == cfg.num_hidden_layers * layer_p
    assert f["per_token"] == pytest.approx(6 * f["matmul_params"] + attn + head)
    assert mfu.step_flops(cfg, "full", seq, causal=True)["per_token"] == pytest.approx(
        6 * f["matmul_params"] + attn / 2 + head)


def test_flops_frozen_blocks_forward_only():
    cfg = config("tiny")
    seq, n = 32, cfg.num_hidden_layers
    head = mfu.step_flops(cfg, "head", seq)
    last1 = mfu.step_flops(cfg, "last:1", seq)
    lora = mfu.step_flops(cfg, "lora:8", seq)
    per_layer_fwd = (head["forward_per_token"] - 2 * cfg.hidden_size * 2 / seq) / n
    # head: forward everywhere plus the head's weight gradient; last:1: one block costs 3x its forward.
    assert head["per_token"] == pytest.approx(head["forward_per_token"] + 2 * cfg.hidden_size * 2 / seq)
    assert last1["per_token"] - head["per_token"] == pytest.approx(2 * per_layer_fwd + 2 * cfg.hidden_size * 2 / seq)
    assert head["per_token"] < last1["per_token"] < lora["per_token"] < mfu.step_flops(cfg, "full", seq)["per_token"]


def test_padding_grouped_wastes_less():
    lengths = np.random.default_rng(0).integers(3, 60, 5000)
    for row in padding_table(lengths, [8, 32]):
        assert 0 <= row["waste_grouped"] < row["waste_shuffled"] < 1


def test_read_run(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({
        "task": "sst2", "model": "smollm2-135m", "policy": "last:4", "device": "cpu", "amp": "bf16",
        "split": {"train": 100}, "timings": {"total_seconds": 12.34, "train_seconds": 8.0},
        "train": {"tokens_per_second": 1234.5, "steps": 4, "padding_waste": 0.05, "epoch_seconds": [4.0, 4.0],
                  "trunk_cache": {"seconds": 1.5}}}))
    row = e2e.read_run(tmp_path)
    assert (row["wall_s"], row["train_tok_s"], row["trunk_cache_s"], row["train_examples"]) == (12.3, 1234.5, 1.5, 100)
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        e2e.read_run(tmp_path / "missing")


def test_suite_smoke(tmp_path, capsys):
    assert main(["--smoke", "--sections", "steps", "--policies", "head,lora:8", "--no-common", "--threads", "1",
                 "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert not res["errors"]
    rows = {r["policy"]: r for r in res["steps"]}
    assert set(rows) == {"head", "lora:8"}
    assert res["amps"] == plan_amps(["auto"], torch.device("cpu"))
    assert {r["amp"] for r in rows.values()} == set(res["amps"])
    for r in rows.values():
        assert r["ours_tok_s"] > 0 and r["hf_tok_s"] > 0 and r["first_loss_diff"] < 1e-2
    assert rows["head"]["eval_max_logit_diff"] < 0.05
    assert "| tiny | head |" in capsys.readouterr().out


def test_cpu_plans_measure_the_dtype_a_run_trains_in(pretend_cpu):
    cpu = torch.device("cpu")
    pretend_cpu(avx512_bf16=False, amx_bf16=False)
    assert plan_amps(["auto"], cpu) == ["fp32"]
    assert plan_amps(["auto"], cpu, amp="bf16") == ["bf16"]
    pretend_cpu(amx_bf16=True)
    assert plan_amps(["auto"], cpu) == ["bf16"]
    assert plan_amps(["auto", "bf16"], cpu) == ["bf16"]


@pytest.mark.slow
def test_suite_smoke_mfu_with_a_compiled_row(tmp_path, capsys):
    """The `full` MFU rows, eager and then TrainConfig(compile=True) (inductor on CPU here; the CUDA run takes
    the same path for Llama-1B at 8 x 1024)."""
    assert main(["--smoke", "--sections", "mfu", "--threads", "1", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert not res["errors"] and [r["compiled"] for r in res["mfu"]] == [False, True]
    for r in res["mfu"]:
        assert r["ours_tok_s"] > 0 and 0 < r["mfu"]
    assert res["mfu"][1]["compile_s"] > 0
    assert "| tiny | full | True |" in capsys.readouterr().out


def test_decode_attention_forms_agree_and_print_a_table(tmp_path, capsys):
    from benchmarks import decode_attention
    out = tmp_path / "d.json"
    assert decode_attention.main(["--rows", "2", "4", "--positions", "8", "--reps", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["ms_per_call"]
    assert [(r["rows"], r["positions"]) for r in rows] == [(2, 8), (4, 8)]
    assert "| rows | positions |" in capsys.readouterr().out


def test_inference_compile_break_even_repays_the_warm_up_and_is_never_without_a_speed_up():
    from benchmarks.inference_compile import break_even
    # 30 s of warm-up at 1.5x: a pass of 90 s eagerly takes 60 s compiled, 90 s with the warm-up.
    assert break_even(30.0, 1.5) == pytest.approx(90.0)
    assert break_even(30.0, 1.0) == float("inf") and break_even(30.0, 0.9) == float("inf")


def test_policy_ratio_pairs_the_policies_turn_by_turn(tmp_path, capsys, monkeypatch):
    from benchmarks import policy_ratio
    from benchmarks.train_step import Setting, paired, turns
    calls = []
    fns = {k: (lambda b, k=k: calls.append(k)) for k in "xyz"}
    times = turns(fns, {}, Setting(torch.device("cpu"), None, 1, 1, steps=1, reps=3))
    assert calls == list("xyzzyxxyz") and all(len(v) == 3 for v in times.values())  # ABBA order
    times = {"a": [1.0, 2.0, 1.0], "b": [2.0, 2.0, 3.0]}
    assert paired(times, "a", "b") == 2.0  # per-turn ratios 2, 1, 3
    out = tmp_path / "ratio.json"
    kept = []
    monkeypatch.setattr(policy_ratio, "keep_freed_pages", lambda: kept.append(1) or True)
    policy_ratio.main(["--smoke", "--eager", "--policies", "lora:4", "full", "--shapes", "2x16", "--reps", "2",
                       "--threads", str(torch.get_num_threads()), "--json", str(out), "--kept-pages"])
    row = json.loads(out.read_text())["rows"][0]  # (the suite's threads kept)
    assert kept == [1] and row["kept pages"] is True  # set once, before the first step, and recorded
    assert row["lora:4 first loss diff"] < 1e-2 and row["full first loss diff"] < 1e-2  # the peers compute the same
    assert len(row["seconds"]["lora:4"]) == 2 and row["lora:4 vs full"] > 0 and 0 < row["full MFU"]
    assert "lora:4 vs full" in capsys.readouterr().out  # the table
    with pytest.raises(SystemExit):
        policy_ratio.main(["--smoke", "--policies", "full"])


def test_kept_pages_runs_the_settings_in_reversing_turns_and_pairs_their_ratios(monkeypatch):
    from benchmarks import kept_pages
    calls = []

    def fake(setting, name, n, compile, threads, cache_dir):
        calls.append(setting)
        seconds = {"glibc": [2.0, 3.0, 1.5], "kept": [1.0, 2.0, 1.0]}[setting][calls.count(setting) - 1]
        return {"seconds": seconds, "minor_faults": 10 if setting == "glibc" else 1, "system_seconds": 0.1, "size": n}

    monkeypatch.setattr(kept_pages, "in_process", fake)
    row = kept_pages.measure("squad-test", 4, False, 1, turns=3)
    assert calls == ["glibc", "kept", "kept", "glibc", "glibc", "kept"]  # ABBA order
    assert row["glibc_over_kept"] == 1.5  # per-turn ratios 2, 1.5, 1.5
    assert row["glibc_seconds"] == 2.0 and row["kept_minor_faults"] == 1


def test_profile_step_names_inductors_kernels_and_groups_them_as_compiled(tmp_path, monkeypatch):
    """--kernels: inductor's CPU kernels appear under their own names (which list ops such as `_to_copy` or
    `mm` that would match other groups) and count as compiled kernels; it needs --compile."""
    from benchmarks import profile_step

    from llama_ft.model import lora
    # Adapters as written: on a CPU with AMX the merged weights' refresh, a few hundred small ops a step, would
    # crowd the tiny model's kernels out of the top operators this reads.
    monkeypatch.setattr(lora, "MERGED_TRAINING", False)
    assert profile_step.group_of("graph_0_cpp_fused__to_copy_exp_mul_where_12") == "compiled kernels"
    assert profile_step.group_of("aten::copy_") == "copy/cast"
    import torch._inductor.config as inductor_config
    before = inductor_config.cpp.enable_kernel_profile
    out = tmp_path / "profile.json"
    profile_step.main(["--shape", "tiny", "--policy", "lora:4", "--batch", "8", "--seq", "64", "--warmup", "1",
                       "--steps", "1", "--compile", "--kernels", "--threads", str(torch.get_num_threads()),
                       "--resident-gib", "0.25", "--json", str(out)])
    res = json.loads(out.read_text())
    # Counted over every operator: in a step this small, whether a kernel makes the top 15 is a matter of timing.
    assert res["named_kernels"] > 0 and res["groups"]["compiled kernels"] > 0
    assert res["faults_per_step"] >= 0 and res["step_seconds"] > 0  # the recorded step, not the unrecorded one
    assert inductor_config.cpp.enable_kernel_profile == before  # torch's, back
    with pytest.raises(SystemExit):
        profile_step.main(["--shape", "tiny", "--kernels"])


def test_matmul_peak_prints_every_shape_against_the_best(tmp_path, capsys):
    from benchmarks import matmul_peak
    from llama_ft.model.flops import CPU_PEAK_SHAPES
    out = tmp_path / "peak.json"
    matmul_peak.main(["--shape", "tiny", "--tokens", "32", "--dtype", "fp32", "--reps", "1", "--squares", "64",
                      "--threads", str(torch.get_num_threads()), "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    shapes, summary = rows[:-1], rows[-1]
    assert [(r["m"], r["k"], r["n"]) for r in shapes[:len(CPU_PEAK_SHAPES)]] == list(CPU_PEAK_SHAPES)
    assert max(r["of best"] for r in shapes) == 1.0 and summary["best TFLOP/s"] >= summary["library probe TFLOP/s"]
    # tiny: hidden 64, intermediate 128, 2 of 4 heads for keys and values (k/v 32 wide), 32 tokens
    assert {(r["m"], r["k"], r["n"]) for r in shapes if "gate/up forward" in r["what"]} == {(32, 64, 128)}
    assert {(r["m"], r["k"], r["n"]) for r in shapes if "k/v weight grad" in r["what"]} == {(32, 32, 64)}
    assert "| what |" in capsys.readouterr().out


def test_weight_grad_layout_runs_both_settings_in_one_model_and_restores_the_switch(tmp_path, capsys, monkeypatch):
    from benchmarks import weight_grad_layout

    import llama_ft.model.linear as linear
    monkeypatch.setattr(linear, "AMX", True)  # the path as a CPU with AMX takes it
    before = linear.TOKEN_MAJOR
    out = tmp_path / "layout.json"
    weight_grad_layout.main(["--shape", "tiny", "--policies", "full", "--shapes", "2x16", "--reps", "2",
                             "--steps", "1", "--threads", str(torch.get_num_threads()), "--json", str(out)])
    row = json.loads(out.read_text())["rows"][0]
    assert linear.TOKEN_MAJOR == before
    assert len(row["seconds"]["token-major"]) == len(row["seconds"]["autograd"]) == 2
    assert row["token-major_vs_autograd"] > 0 and row["token-major_vs_peer"] > 0
    assert abs(row["first_loss"] - row["peer_first_loss"]) < 1e-2  # the untrained model and its peer agree
    assert "token-major_vs_autograd" in capsys.readouterr().out  # the table
    torch._dynamo.reset()


def test_cuda_graphs_times_the_engine_against_the_peer_over_the_same_batches(tmp_path, capsys):
    """On a CPU only the run without graphs exists (here eager, to be quick): the engine's epoch and the peer's
    over the same batches, the ratio over the same steps."""
    from benchmarks import cuda_graphs
    out = tmp_path / "graphs.json"
    cuda_graphs.main(["--device", "cpu", "--shape", "tiny", "--policies", "lora:4", "--settings", "off", "--eager",
                      "--examples", "24", "--batch", "4", "--min-len", "4", "--max-len", "40", "--json", str(out)])
    row, = json.loads(out.read_text())["rows"]
    assert row["steps"] == 6 and row["timed_after_step"] == 2
    assert row["off_over_peer"] == pytest.approx(row["off_tok_s"] / row["peer_tok_s"])
    assert row["off_over_peer_median_step"] == pytest.approx(row["peer_median_step_s"] / row["off_median_step_s"])
    assert len(row["off_step_seconds"]) == len(row["peer_real_tokens"]) == 6
    assert row["off_real_tokens"] == row["peer_real_tokens"]       # the same batches, the same real tokens
    assert "| lora:4 |" in capsys.readouterr().out


def test_merged_lora_runs_both_settings_in_one_model_beside_full_and_the_peer(tmp_path, capsys, monkeypatch):
    """The merged setting holds the buffers (as on a CPU with AMX) and the written one none; both train the same
    model in turns, and the model leaves without buffers."""
    from benchmarks import merged_lora

    from llama_ft.model import lora
    from llama_ft.model.merged_lora import merged_projections
    monkeypatch.setattr(lora, "cpu_has_amx", lambda: True)
    seen = torch.zeros((), dtype=torch.long)  # a tensor, not a list: the blocks run compiled (tests/conftest.py)

    def counted(x, ps):
        seen.add_(1)
        return merged_projections(x, ps)
    monkeypatch.setattr(lora, "merged_projections", counted)
    out = tmp_path / "merged.json"
    merged_lora.main(["--shape", "tiny", "--policy", "lora:4", "--shapes", "2x16", "--reps", "2", "--steps", "1",
                      "--threads", str(torch.get_num_threads()), "--json", str(out)])
    row, = json.loads(out.read_text())["rows"]
    assert row["merged_buffers"] > 0 and seen > 0  # the merged setting took the path
    assert {k: len(v) for k, v in row["seconds"].items()} == {"as written": 2, "merged": 2, "peer": 2, "full": 2}
    assert row["merged_vs_as_written"] > 0 and row["merged_vs_full"] > 0 and row["merged_vs_peer"] > 0
    assert abs(row["first_loss"] - row["peer_first_loss"]) < 1e-2  # the untrained model and its peer agree
    assert "merged_vs_as_written" in capsys.readouterr().out  # the table
    torch._dynamo.reset()


def test_merged_lora_recipe_pairs_consecutive_runs_by_tokens_and_by_steps():
    from benchmarks.merged_lora import recipe_ratios
    steps = [9.0, 5.0, 4.0, 30.0, 4.0, 8.0]   # the first two compile; the fourth compiled again in one run only
    rows = [{"merged": True, "tokens_per_s": 110.0, "step_seconds": [9.0, 5.0, 2.0, 30.0, 2.0, 4.0]},
            {"merged": False, "tokens_per_s": 100.0, "step_seconds": steps},
            {"merged": False, "tokens_per_s": 100.0, "step_seconds": steps},
            {"merged": True, "tokens_per_s": 125.0, "step_seconds": [9.0, 5.0, 4.0, 20.0, 4.0, 8.0]}]
    ratios, step_ratios = recipe_ratios(rows)
    assert ratios == pytest.approx([1.1, 1.25])
    assert step_ratios == pytest.approx([2.0, 1.0])  # medians over steps 3+: the recompiling step left out


def test_length_buckets_pairs_consecutive_runs_and_sums_onednns_kernel_builds():
    from benchmarks.length_buckets import kernel_seconds, paired_ratios
    rows = [{"multiple": 1, "tokens_per_s": 100.0}, {"multiple": 16, "tokens_per_s": 110.0},
            {"multiple": 16, "tokens_per_s": 120.0}, {"multiple": 1, "tokens_per_s": 100.0}]
    assert paired_ratios(rows) == pytest.approx([1.1, 1.2])
    log = ("onednn_verbose,v1,primitive,create:cache_miss,cpu,matmul,brg,undef,src:bf16,,,2.5\n"
           "onednn_verbose,v1,primitive,create:cache_hit,cpu,matmul,brg,undef,src:bf16,,,0.01\n"
           "onednn_verbose,v1,primitive,create:cache_miss,cpu,matmul,brg,undef,src:bf16,,,1.5\n")
    assert kernel_seconds(log) == pytest.approx(0.004)


def test_dynamic_shapes_pairs_runs_and_charges_only_the_slow_steps_to_compilation():
    from benchmarks.dynamic_shapes import paired_ratios, summarize
    tokens = [1000, 1000, 1000, 2000, 1000, 1000]
    static = summarize({"setting": "static", "train_seconds": 60.0, "step_tokens": tokens,
                        "step_seconds": [30.0, 1.0, 1.0, 12.0, 1.0, 1.0]})   # step 4 recompiled
    dynamic = summarize({"setting": "dynamic", "train_seconds": 40.0, "step_tokens": tokens,
                         "step_seconds": [20.0, 1.0, 1.0, 2.0, 1.0, 1.25]})
    assert static["steady_tokens_per_s"] == 1000.0                     # the median: the recompiling step left out
    assert static["extra_seconds"] == pytest.approx(29.0 + 10.0)
    assert dynamic["extra_seconds"] == pytest.approx(19.0 + 0.25)
    (pair,) = paired_ratios([static, dynamic])
    assert pair["other"] == "static" and pair["train_seconds_other_over_dynamic"] == pytest.approx(1.5)
    assert pair["median_step_other_over_dynamic"] == pytest.approx(1.0)  # steps 3+: 1, 6, 1, 0.8
    assert paired_ratios([dynamic, static]) == [pair]
    assert paired_ratios([static, {**static, "setting": "duck"}]) == []   # no dynamic run: no pair


def test_attention_backward_builds_the_first_layers_of_the_model_it_is_given(tmp_path, capsys, monkeypatch):
    """--model and --layers choose the shape: the model the settings share has that many blocks, and the row says
    which shape it measured. The blocks run eagerly here, to be quick (both backwards run eagerly too)."""
    from benchmarks import attention_backward
    from benchmarks.train_step import ours_stepper
    from llama_ft.hf.loading import random_model
    built = []
    monkeypatch.setattr(attention_backward, "random_model",
                        lambda cfg, *a, **k: built.append(cfg.num_hidden_layers) or random_model(cfg, *a, **k))
    monkeypatch.setattr(attention_backward, "ours_stepper",
                        lambda model, policy, s, compile: ours_stepper(model, policy, s, compile=False))
    out = tmp_path / "attention_backward.json"
    attention_backward.main(["--model", "tiny", "--layers", "1", "--shapes", "2x16", "--blocks", "2", "--reps", "1",
                             "--steps", "1", "--threads", str(torch.get_num_threads()), "--json", str(out)])
    row, = json.loads(out.read_text())["rows"]
    assert built == [1] and (row["model"], row["layers"]) == ("tiny", 1)
    assert set(row["seconds"]) == {"flash", "gemm-2", "peer"} and row["gemm-2_vs_flash"] > 0
    assert "| tiny | 1 |" in capsys.readouterr().out  # the table
    for layers in ("0", "5"):  # tiny has 4 blocks
        with pytest.raises(SystemExit):
            attention_backward.main(["--model", "tiny", "--layers", layers])
    assert "tiny has 4 decoder blocks" in capsys.readouterr().err
    torch._dynamo.reset()
