"""llama_ft.heap: freed host memory goes back to the operating system."""
import mmap
import os
import platform
import subprocess
import sys

import pytest
import torch

from llama_ft.heap import release_free_memory, resident_bytes


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_fragmented_activations_leave_the_resident_set():
    # Freeing a 16 MiB block raises glibc's mmap threshold above it, so the 1 MiB tensors below come from the
    # heap, as a step's activations do; the last one stays alive and pins the heap's top, so free() alone cannot
    # shrink it.
    torch.ones(4 * 2**20)  # allocated and freed at once
    tensors = [torch.ones(2**18) for _ in range(400)]  # 400 x 1 MiB, written so every page is resident
    keep = tensors[-1]
    del tensors
    before = resident_bytes()
    assert release_free_memory()
    after = resident_bytes()
    assert before - after > 200 * 2**20, (before, after)
    assert keep.sum() == 2**18


@pytest.mark.parametrize("each_micro_batch", [False, True])
def test_a_cpu_step_trims_after_its_update_and_optionally_after_each_micro_batch(monkeypatch, each_micro_batch):
    from llama_ft import heap
    from llama_ft.train import loop, train
    from tiny import dataset, tiny_model, train_config

    calls = []
    monkeypatch.setattr(loop, "release_free_memory", lambda *a: calls.append("micro-batch") or True)
    monkeypatch.setattr(heap, "release_free_memory", lambda *a: calls.append("step") or True)
    monkeypatch.setattr(heap, "EACH_MICRO_BATCH", each_micro_batch)
    monkeypatch.setattr(heap, "STEP_GROWTH", 0)  # as a step whose activations grow the heap past the bound
    # 16 examples, global batch 8 in micro-batches of 2: 2 steps of 4 micro-batches each.
    res = train(tiny_model(), dataset(n=16), train_config(epochs=1, batch_size=2, global_batch=8, policy="full"))
    assert res.steps == 2
    assert calls.count("step") == 2
    assert calls.count("micro-batch") == (2 * 3 if each_micro_batch else 0)


def test_a_cpu_inference_pass_starts_and_ends_on_a_trimmed_heap(monkeypatch):
    """A scoring pass after training starts from a trimmed heap: the steps hand pages back only once they add up,
    and the pass's peak would otherwise sit on top of what the last steps left free."""
    from llama_ft.train import loop, predict
    from tiny import dataset, tiny_model

    calls = []
    monkeypatch.setattr(loop, "release_free_memory", lambda *a: calls.append("trim") or True)
    model = tiny_model()
    model.register_forward_pre_hook(lambda *a: calls.append("batch"))
    predict(model, dataset(n=8), batch_size=4, compile=False)
    assert calls == ["trim", "batch", "batch", "trim"]


def test_a_step_trims_only_once_the_resident_set_has_grown(monkeypatch):
    """Short steps reuse the pages the previous one freed: trimming after each would fault them in again."""
    from llama_ft import heap

    calls = []
    monkeypatch.setattr(heap, "release_free_memory", lambda: calls.append("trim") or True)
    trim = heap.StepTrim(growth=64 * 2**20)
    assert trim()  # the first step: nothing to compare with yet
    assert not trim()
    # 128 MiB of fresh pages, each written, so resident: an anonymous mapping, not malloc, which may hand back
    # pages an earlier test freed and glibc kept (heap.keep_freed_pages), leaving the resident set as it was.
    grown = mmap.mmap(-1, 128 * 2**20)
    for offset in range(0, len(grown), mmap.PAGESIZE):
        grown[offset] = 1
    assert trim()
    assert not trim()
    assert calls == ["trim", "trim"]
    grown.close()
    monkeypatch.setattr(heap, "resident_bytes", lambda: None)  # no /proc: every step trims, as before
    assert trim() and trim()


KEEP_PROBE = """
import resource, sys, torch
from llama_ft import heap
heap.KEEP_FREED_PAGES = sys.argv[1] == "keep"
assert heap.keep_freed_pages() == heap.KEEP_FREED_PAGES
faults = []
for step in range(4):  # each step allocates 16 activations of 1-24 MiB (184 MiB) and frees them at its end
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    acts = [torch.ones((1 + (7 * i) % 24) * 2**18) for i in range(16)]
    del acts
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[1:]))
"""


@pytest.mark.parametrize("entry", ["train", "predict", "predict_versions", "generate"])
def test_every_cpu_entry_point_keeps_freed_pages_before_its_first_batch(monkeypatch, entry):
    """Training, a scoring pass, several versions over a shared bottom (whose pass runs before any predict) and
    generation each set keep_freed_pages before the model sees a batch, whichever of them a process runs first."""
    from llama_ft.model import generate as gen
    from llama_ft.model.llama import LlamaForCausalLM
    from llama_ft.train import apply_training_policy, loop, predict, predict_versions, train, trunk
    from llama_ft.train.checkpoint import trainable_state
    from tiny import dataset, tiny_config, tiny_model, train_config

    calls = []
    for module in (loop, trunk, gen):
        monkeypatch.setattr(module, "keep_freed_pages", lambda: calls.append("keep") or True)
    model = LlamaForCausalLM(tiny_config()) if entry == "generate" else tiny_model()
    # The first block sees every batch, the shared bottom's pass included (which bypasses the model's forward).
    model.backbone.layers[0].register_forward_pre_hook(lambda *a: calls.append("batch"))
    if entry == "train":
        train(model, dataset(n=8), train_config(epochs=1, batch_size=4, global_batch=4, policy="full"))
    elif entry == "predict":
        predict(model, dataset(n=8), batch_size=4, compile=False)
    elif entry == "predict_versions":
        apply_training_policy(model, train_config(policy="last:1"))
        predict_versions(model, dataset(n=8), [None, trainable_state(model)], batch_size=4, compile=False)
    else:
        gen.generate(model.eval(), [[5, 6, 7], [8, 9]], max_new_tokens=2)
    assert "batch" in calls and calls.index("keep") < calls.index("batch"), calls


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's thresholds are glibc's")
def test_kept_pages_spare_the_next_step_its_page_faults():
    """glibc, left to itself, unmaps large freed blocks and the heap's free top, so each batch faulted its
    activations' pages in again (zeroed by the kernel); keep_freed_pages keeps them for the next batch."""
    def faults(setting: str) -> int:
        return int(subprocess.run([sys.executable, "-c", KEEP_PROBE, setting], capture_output=True, text=True,
                                  check=True).stdout)

    kept, glibc = faults("keep"), faults("glibc")
    pages = 3 * 184 * 2**20 // 4096  # the three steps after the first, if every page of theirs were new
    assert glibc > pages // 4, (kept, glibc)
    assert kept < pages // 50, (kept, glibc)


CACHE_PROBE = """
import os, torch
import llama_ft
from llama_ft.heap import release_free_memory, resident_bytes as rss
grown = 0
# Without oneDNN's bf16 (a CPU with neither AVX-512 nor AMX) bf16 matmuls bypass oneDNN, keep no kernels, and take
# about a second each: nothing to measure.
if torch.ops.mkldnn._is_mkldnn_bf16_supported():
    w = torch.randn(1536, 576, dtype=torch.bfloat16)
    torch.nn.functional.linear(torch.randn(8, 576, dtype=torch.bfloat16), w)
    release_free_memory()
    before = rss()
    for m in range(512, 912):  # 400 matmul shapes, as 400 micro-batches of new lengths bring
        torch.nn.functional.linear(torch.randn(m, 576, dtype=torch.bfloat16), w)
    release_free_memory()
    grown = rss() - before
print(os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"), grown)
"""


def cache_probe(**env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.endswith("_PRIMITIVE_CACHE_CAPACITY")}
    out = subprocess.run([sys.executable, "-c", CACHE_PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


def test_import_bounds_onednn_kernel_cache_unless_the_user_chose():
    from llama_ft.heap import ONEDNN_PRIMITIVE_CACHE
    capacity, bounded = cache_probe()
    assert capacity == str(ONEDNN_PRIMITIVE_CACHE)
    assert cache_probe(DNNL_PRIMITIVE_CACHE_CAPACITY="7")[0] == "None"  # oneDNN's older name is honoured too
    user, unbounded = cache_probe(ONEDNN_PRIMITIVE_CACHE_CAPACITY="1024")
    assert user == "1024"
    if unbounded < 100 * 2**20:
        pytest.skip(f"this CPU's bf16 matmuls kept {unbounded / 2**20:.0f} MiB for 400 shapes: no per-shape kernels "
                    "(0: they do not run through oneDNN here)")
    # 400 shapes: the default cache keeps all of them, the bounded one its last 128.
    assert bounded < 0.8 * unbounded, (bounded, unbounded)
