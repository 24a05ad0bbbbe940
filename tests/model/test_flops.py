"""Training FLOPs (llama_ft/model/flops.py) against torch's FlopCounterMode on the real forward and backward."""
import time

import numpy as np
import pytest
import torch
from tiny import dataset, tiny_model
from torch.utils.flop_counter import FlopCounterMode

from llama_ft.model import flops
from llama_ft.model.flops import device_peak, training_flops
from llama_ft.model.policies import apply_policy
from llama_ft.train.batching import collate
from llama_ft.train.loop import TaskLoss
from llama_ft.train.trunk import bottom_forward, find_split


@pytest.mark.parametrize("task", ["classification", "qa"])
@pytest.mark.parametrize("policy", ["full", "head", "last:1"])
@pytest.mark.parametrize("cached", [False, True])
def test_weight_matmuls_match_flop_counter_mode(task, policy, cached):
    """The weight-matmul FLOPs of a training step (forward under no_grad for the frozen bottom, backward of the
    top) equal what FlopCounterMode counts; with the trunk cache only the top runs. Attention is left out of
    the comparison: the CPU SDPA kernel has no FlopCounterMode formula (its count is PaLM's, pinned in
    tests/benchmarks)."""
    if cached and policy == "full":
        pytest.skip("nothing is frozen to cache under full")
    model = tiny_model(task)
    apply_policy(model, policy)
    split = find_split(model)
    data = dataset(task, 5, seed=4)
    b = collate(data, 0)
    targets = {k: b[k] for k in ("label", "start_positions", "end_positions") if k in b}
    features = None
    if cached:
        with torch.no_grad():
            features = bottom_forward(model, split, b["input_ids"], b["attention_mask"])
    with FlopCounterMode(display=False) as counter:
        TaskLoss(model, split, torch.float32)(b["input_ids"], b["attention_mask"], features, **targets).backward()
    f = training_flops(model, cached_layers=split.start if cached else 0)
    # Padded batches run on padding too: count the padded length, as FlopCounterMode sees it.
    T = b["input_ids"].shape[1]
    counted = f.per_token * T * len(data) + f.per_sequence * len(data)
    assert counted == counter.get_total_flops()


def test_attention_and_per_sequence_terms():
    model = tiny_model()
    apply_policy(model, "full")
    f = training_flops(model)
    cfg = model.config
    assert f.attention == 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim  # PaLM, per T
    assert training_flops(model, causal=True).attention == f.attention / 2
    assert f.per_sequence == 6 * cfg.hidden_size * 2  # the score head, on one pooled token
    lengths = np.array([3, 10])
    assert f.of_lengths(lengths) == pytest.approx(sum(f.at(n) * n for n in lengths))


def test_peak_probe_is_short_and_measured_once(monkeypatch):
    from llama_ft.train.config import resolve_amp
    monkeypatch.setattr(flops, "_PROBED", {})
    # the dtype a run on this CPU computes in (a bf16 probe takes seconds on a CPU without bf16 dot products)
    dtype = resolve_amp("auto", torch.device("cpu")) or torch.float32
    t0 = time.perf_counter()
    first = device_peak(torch.device("cpu"), dtype)
    took = time.perf_counter() - t0
    assert first > 1e8 and took < 1.0
    assert device_peak(torch.device("cpu"), dtype) == first


def test_probing_again_keeps_the_fastest_probe(monkeypatch):
    """A probe beside other work reads low, never high: probing again can only raise the peak."""
    readings = iter([2e9, 5e9, 3e9])
    monkeypatch.setattr(flops, "probe_peak", lambda *a, **k: (next(readings), (1, 1, 1)))
    monkeypatch.setattr(flops, "_PROBED", {})
    cpu = torch.device("cpu")
    assert device_peak(cpu, torch.float32) == 2e9
    assert device_peak(cpu, torch.float32) == 2e9  # measured once
    assert device_peak(cpu, torch.float32, again=True) == 5e9
    assert device_peak(cpu, torch.float32, again=True) == 5e9  # the slower third probe does not lower it


def test_the_cpu_probe_takes_the_fastest_of_its_shapes_a_tall_one_among_them(monkeypatch):
    """A CPU's matrix units reach their best on a tall product with a narrow operand, not on a square one: the
    probe measures each of CPU_PEAK_SHAPES and keeps the fastest (a square-only probe made MFU read high)."""
    seen = []

    def rate(dtype, device, shape, reps=5):
        seen.append(shape)
        m, k, n = shape
        return 1e12 * m / max(k, n)  # fastest where the product is tallest
    monkeypatch.setattr(flops, "matmul_peak", rate)
    monkeypatch.setattr(flops, "_PROBED", {})
    peak = device_peak(torch.device("cpu"), torch.float32)
    assert seen == list(flops.CPU_PEAK_SHAPES)
    assert peak == max(rate(None, None, sh) for sh in flops.CPU_PEAK_SHAPES) == 8e12
    assert any(m >= 8 * max(k, n) for m, k, n in flops.CPU_PEAK_SHAPES)
    assert flops.probe_peak(torch.device("cpu"), torch.float32, ((64, 64, 64), (256, 32, 64))) == (4e12, (256, 32, 64))


def test_matmul_peak_counts_the_flops_of_a_rectangular_product(monkeypatch):
    monkeypatch.setattr(flops, "_time_matmul", lambda a, b, reps: [2.0] * reps if reps > 2 else [])
    assert flops.matmul_peak(torch.float32, torch.device("cpu"), (8, 4, 2)) == 2 * 8 * 4 * 2 / 2.0
    assert flops.matmul_peak(torch.float32, torch.device("cpu"), 4) == 2 * 4 ** 3 / 2.0
