"""The training-memory estimate against what real training steps hold on the CPU, term by term and at the peak."""
import itertools

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.profiler import ProfilerActivity, profile

from llama_ft import LlamaConfig, LlamaForSequenceClassification
from llama_ft.model.config import PRESETS
from llama_ft.model.lora import merged_dtype
from llama_ft.model.memory import training_memory
from llama_ft.model.policies import apply_policy
from llama_ft.train import TrainConfig, train
from llama_ft.train.loop import prepare_model

# Big enough that activations outweigh the weights, small enough for two steps in seconds on one core.
SMALL = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, vocab_size=1000, pad_token_id=0)
B, T = 4, 128
# Ops through which a saved tensor is still a weight: autocast's bf16 copy and the views matmuls take of it, and
# the concatenation that stacks the adapters of projections sharing their input (llama_ft.model.lora.project).
WEIGHT_VIEWS = {"ToCopyBackward0", "TBackward0", "ViewBackward0", "TransposeBackward0", "CatBackward0"}


def _is_weight_copy(t: torch.Tensor) -> bool:
    def from_weights(fn) -> bool:
        if type(fn).__name__ == "AccumulateGrad":
            return True
        nxt = [f for f, _ in fn.next_functions if f is not None]
        return type(fn).__name__ in WEIGHT_VIEWS and bool(nxt) and all(from_weights(f) for f in nxt)
    return t.grad_fn is not None and from_weights(t.grad_fn)


def measure(policy: str, grad_checkpointing: bool) -> tuple[dict, dict]:
    """(estimate, measurement) for two training steps of the small model through llama_ft.train.train.

    Measured: the bytes of the weights, of the gradients when the optimizer steps, of AdamW's state after it;
    the tensors the last forward saved for backward (one count per storage, weights apart from bf16 weight
    copies apart from activations); and the peak of live CPU tensor bytes from torch.profiler's allocation
    records, on top of the bytes already live when it starts."""
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig.from_dict(SMALL), 2)
    apply_policy(model, policy)
    est = training_memory(model, batch=B, seq_len=T,
                          merged_lora=merged_dtype(torch.device("cpu"), torch.bfloat16, 1) is not None)
    cfg = TrainConfig(policy=policy, batch_size=B, max_steps=2, progress=False, trunk_cache=False, amp="bf16",
                      device="cpu", grad_checkpointing=grad_checkpointing)
    # Cast the weights before profiling: the profiler cannot see the frees of blocks allocated before it started.
    prepare_model(model, cfg, torch.bfloat16, torch.device("cpu"))
    got, saved, forwards, params, held = {}, {}, [], set(), set()

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved.setdefault(storage.data_ptr(), (storage.nbytes(), storage.data_ptr() in held or _is_weight_copy(t)))
        return t

    def before_forward(module, args):
        params.clear()
        params.update(p.untyped_storage().data_ptr() for p in module.parameters())
        held.clear()  # training's merged LoRA weights (llama_ft.model.lora.MergedTraining): working copies
        held.update(b.untyped_storage().data_ptr() for b in module.buffers())
        saved.clear()

    def after_forward(module, args, out):
        if not torch.is_grad_enabled():  # the engine's no-grad check of the updated weights saves nothing
            return
        forwards.append({"activations": sum(n for n, w in saved.values() if not w),
                         "working": sum(n for n, w in saved.values() if w)})

    def before_step(opt, args, kwargs):
        got["grads"] = sum(p.grad.nbytes for g in opt.param_groups for p in g["params"])

    def after_step(opt, args, kwargs):
        got["optimizer"] = sum(v.nbytes for s in opt.state.values() for k, v in s.items() if k != "step")

    handles = [model.register_forward_pre_hook(before_forward), model.register_forward_hook(after_forward),
               register_optimizer_step_pre_hook(before_step), register_optimizer_step_post_hook(after_step)]
    live = sum(t.nbytes for t in itertools.chain(model.parameters(), model.buffers()))
    try:
        with saved_tensors_hooks(pack, lambda t: t), profile(activities=[ProfilerActivity.CPU],
                                                              profile_memory=True) as prof:
            train(model, [{"input_ids": [3 + (i * 7 + j) % 900 for j in range(T)], "label": i % 2}
                          for i in range(2 * B)], cfg)
    finally:
        for h in handles:
            h.remove()
    got["weights"] = sum(p.nbytes for p in model.parameters())
    if not grad_checkpointing:  # the checkpoint's own hooks hide what the blocks save
        got.update(forwards[-1])
    allocs = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    got["peak"] = live + max(itertools.accumulate(n for _, n in allocs))
    return est, got


@pytest.mark.parametrize("policy", ["full", "lora:8"])
def test_estimate_matches_what_two_real_training_steps_hold(policy):
    """Each term within 5% of what the engine holds; the sum of all terms within 0.8x-1.25x of the measured
    peak (the sum counts gradients and activations at once, as under gradient accumulation)."""
    est, got = measure(policy, grad_checkpointing=False)
    for term in ("weights", "grads", "optimizer", "activations", "working"):
        assert 0.95 <= est[term] / got[term] <= 1.05, (term, est[term], got[term])
    assert got["activations"] > est["weights"]  # the shape measures activations, not rounding
    assert 0.8 <= est["total"] / got["peak"] <= 1.25, (est["total"], got["peak"])


@pytest.mark.parametrize("policy", ["full", "lora:8"])
def test_checkpointed_estimate_matches_the_measured_peak(policy):
    est, got = measure(policy, grad_checkpointing=True)
    assert 0.8 <= est["total_checkpointed"] / got["peak"] <= 1.25, (est["total_checkpointed"], got["peak"])
    assert est["activations_checkpointed"] < est["activations"] / 2


def _meta(preset: str, policy: str, task=LlamaForSequenceClassification):
    with torch.device("meta"):
        model = task(LlamaConfig.from_pretrained(preset), 2)
    apply_policy(model, policy)
    return model


def test_fsdp_shards_states_and_adds_the_gathered_working_set():
    model = _meta("llama-3.1-8b", "full")
    n = sum(p.numel() for p in model.parameters())
    one = training_memory(model, batch=1, seq_len=128)
    ddp = training_memory(model, batch=1, seq_len=128, devices=8)
    fsdp = training_memory(model, batch=1, seq_len=128, devices=8, shard="fsdp")
    assert (one["weights"], one["grads"], one["optimizer"]) == (4 * n, 4 * n, 8 * n)
    assert one["working"] == 2 * (n - PRESETS["llama-3.1-8b"]["vocab_size"] * 4096 - 4096 * (1 + 2 * 32))
    assert one["comm"] == 0 and ddp["comm"] == 4 * n  # DDP's fp32 gradient buckets
    assert fsdp["weights"] == -(-4 * n // 8) and fsdp["optimizer"] == -(-8 * n // 8)
    layer = sum(p.numel() for p in model.backbone.layers[0].parameters())
    root = n - 32 * layer
    assert fsdp["working"] == 2 * (root + 2 * layer)
    assert fsdp["comm"] == 6 * root  # the embeddings are the largest unit and they train under `full`
    assert fsdp["activations"] < ddp["activations"]  # bf16 residual and shared projection inputs


def test_eight_b_full_fits_eight_80gb_gpus_only_sharded():
    model = _meta("llama-3.1-8b", "full")
    gib = 2**30
    assert training_memory(model, batch=16, seq_len=384, devices=8)["total_checkpointed"] > 80 * gib
    assert training_memory(model, batch=16, seq_len=384, devices=8, shard="fsdp")["total"] < 79 * gib


def test_bad_arguments_name_the_argument():
    model = _meta("llama-3.2-1b", "head")
    with pytest.raises(ValueError, match="shard='zero'"):
        training_memory(model, batch=1, seq_len=1, shard="zero")
    with pytest.raises(ValueError, match="seq_len=0"):
        training_memory(model, batch=1, seq_len=0)


if __name__ == "__main__":  # README's table: python tests/model/test_memory.py
    print("| policy | checkpointing | weights | grads | AdamW | bf16 copies | activations | total / peak |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for pol, ckpt in itertools.product(("full", "lora:8"), (False, True)):
        e, g = measure(pol, ckpt)
        terms = ["-" if k not in g else f"{e[k] / g[k]:.3f}"
                 for k in ("weights", "grads", "optimizer", "working", "activations")]
        total = e["total_checkpointed" if ckpt else "total"]
        print(f"| {pol} | {'yes' if ckpt else 'no'} | " + " | ".join(terms)
              + f" | {total / 2**20:.1f} / {g['peak'] / 2**20:.1f} MiB ({total / g['peak']:.2f}x) |")
