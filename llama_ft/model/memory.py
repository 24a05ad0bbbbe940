"""Training memory per device, from a model's shapes and which of its weights train (meta device is enough).

It follows how the engine (llama_ft.train) stores a run under bf16 autocast: frozen weights in bf16, trainable
weights as fp32 masters with fp32 gradients and AdamW's two fp32 states, and the tensors autograd keeps from a
forward for its backward. `shard="none"` holds a full replica on each device (DDP above one device);
`shard="fsdp"` plans for FSDP2: `fully_shard` on every decoder block and on the root (embeddings, final norm,
head), parameters gathered in bf16, gradients reduced in fp32. Activations assume unpadded batches (no mask).
"""
from __future__ import annotations

import math

from torch import nn

from llama_ft.model.lora import LoRALinear, mergeable

SHARDS = ("none", "fsdp")
# Held on a GPU before any tensor: the CUDA context, kernel images, cuBLAS/NCCL workspaces.
RUNTIME_RESERVE = 2**30


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _numel(module: nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def autocast_copies(module: nn.Module) -> int:
    """Elements autocast copies to bf16 in a forward: each trainable weight or bias a matmul reads. The copy
    is cached until the autocast region ends and kept by autograd for the input's gradient, so a replica holds
    one bf16 copy of every trainable matrix from the forward into the backward (frozen weights are bf16 already,
    and an embedding lookup is not autocast)."""
    return sum(p.numel() for m in module.modules() if isinstance(m, nn.Linear)
               for p in m.parameters(recurse=False) if p.requires_grad)


def merged_copies(module: nn.Module) -> int:
    """Elements LoRA training through merged weights (lora.MergedTraining) holds beyond autocast's copies: each
    adapted projection's W + s B A (its s A and s B take the place of autocast's bf16 copies of A and B)."""
    return sum(m.out_features * m.in_features for m in module.modules() if isinstance(m, LoRALinear) and mergeable(m))


def _norm_bytes(h: int, residual_bytes: int, input_grad: bool, weight_trains: bool) -> int:
    # RMSNorm squares and scales an fp32 copy of its input (pow and mul keep it: 4h) and rsqrt keeps its
    # [.., 1] result; the weight's gradient needs the normalised input, in the residual's dtype.
    return (4 * h + 4 if input_grad else 0) + (residual_bytes * h if weight_trains else 0)


def _matmul_inputs(h: int, consumers: int, fp32_input: bool) -> int:
    # Autocast caches casts of weights, not of activations: an fp32 norm output (an fp32 master norm weight
    # times a bf16 input) is copied to bf16 by each projection reading it; a bf16 one is shared by all.
    return 2 * h * (consumers if fp32_input else 1)


def block_bytes_per_token(layer: nn.Module, cfg, *, residual_bytes: int, input_grad: bool, fsdp: bool) -> int:
    """Bytes per token that one decoder block's forward keeps for its backward under bf16 autocast."""
    h, i, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    qd, kvd = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    mlp = layer.mlp
    norm_trains = layer.input_layernorm.weight.requires_grad
    # FSDP gathers the norm weight in bf16, so its output stays bf16; a replica multiplies by the fp32 master.
    fp32_out = norm_trains and not fsdp
    n = _norm_bytes(h, residual_bytes, input_grad, norm_trains)
    n += _norm_bytes(h, residual_bytes, True, layer.post_attention_layernorm.weight.requires_grad)
    # A projection keeps its input only for a weight gradient: its own weight's or its adapter's.
    if _trains(layer.self_attn.q_proj):
        n += _matmul_inputs(h, 3, fp32_out)
    if _trains(mlp.gate_proj):
        n += _matmul_inputs(h, 2, fp32_out)
    if _trains(mlp.down_proj):
        n += 2 * i
    n += 4 * 2 * hd  # rotary: cos and sin cast to bf16 for q and for k, which the products keep
    # SDPA keeps q, k, v, its output and the fp32 logsumexp. The flash kernels lay the output out as
    # [B, T, heads, head_dim], so o_proj reads it through a view: the same storage, counted once.
    n += 2 * (2 * qd + 2 * kvd) + 4 * cfg.num_attention_heads
    n += 3 * 2 * i  # SwiGLU: silu keeps its input, the product keeps silu's output and up's output
    # Each adapter keeps its rank-r intermediate x A^T for B's gradient.
    n += sum(2 * m.rank for m in layer.modules() if isinstance(m, LoRALinear))
    return n


def _head_bytes_per_token(model: nn.Module, residual_bytes: int, input_grad: bool) -> int:
    cfg, bb = model.config, model.backbone
    n = 0
    if input_grad or bb.norm.weight.requires_grad:
        n += _norm_bytes(cfg.hidden_size, residual_bytes, input_grad, bb.norm.weight.requires_grad)
    if model.task == "qa" and _trains(model.qa_outputs):
        n += 2 * cfg.hidden_size
    if model.task == "causal-lm":
        # Cross-entropy keeps the fp32 log-softmax of every token's logits.
        n += 4 * cfg.vocab_size if input_grad or _trains(model.lm_head) else 0
        n += 2 * cfg.hidden_size if _trains(model.lm_head) else 0
    # Classification pools one vector per sequence before its head: nothing per token.
    return n


def activation_bytes(model: nn.Module, batch: int, seq_len: int, fsdp: bool = False) -> tuple[int, int]:
    """(without, with gradient checkpointing): bytes autograd keeps between forward and backward."""
    bb = model.backbone
    n = len(bb.layers)
    emb_trains = bb.embed_tokens.weight.requires_grad
    # Blocks below the first trainable weight run under no_grad (llama_ft.train.trunk) and keep nothing.
    first = 0 if emb_trains else next((k for k, layer in enumerate(bb.layers) if _trains(layer)), n)
    # A replica's trainable embedding is fp32, and adding bf16 block outputs to it keeps the residual fp32;
    # FSDP gathers it in bf16.
    r = 4 if emb_trains and not fsdp else 2
    blocks = [block_bytes_per_token(layer, model.config, residual_bytes=r, input_grad=emb_trains or k > first,
                                    fsdp=fsdp) for k, layer in enumerate(bb.layers) if k >= first]
    head = _head_bytes_per_token(model, r, input_grad=emb_trains or first < n)
    tokens = batch * seq_len
    plain = tokens * (sum(blocks) + head)
    # Checkpointed blocks keep only their input; backward recomputes one block at a time.
    ckpt = tokens * (len(blocks) * r * model.config.hidden_size + max(blocks, default=0) + head)
    return plain, ckpt


def training_memory(model: nn.Module, *, batch: int, seq_len: int, devices: int = 1,
                    shard: str = "none", merged_lora: bool = False) -> dict[str, int]:
    """Bytes per device of a training step: weights, grads, optimizer, working copies, communication buffers,
    activations (with and without gradient checkpointing) and the totals. `batch` is per device. `merged_lora`:
    the adapters train through merged weights (llama_ft.model.lora.merged_dtype says where train() does)."""
    if shard not in SHARDS:
        raise ValueError(f"shard={shard!r}; use one of {', '.join(SHARDS)}.")
    for name, v in (("batch", batch), ("seq_len", seq_len), ("devices", devices)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r}; it must be a positive integer.")
    fsdp = shard == "fsdp"
    trainable, frozen = _numel(model, True), _numel(model, False)
    split = devices if fsdp else 1
    out = {"weights": math.ceil((2 * frozen + 4 * trainable) / split),
           "grads": math.ceil(4 * trainable / split),
           "optimizer": math.ceil(8 * trainable / split)}  # AdamW: exp_avg and exp_avg_sq, fp32
    layers = model.backbone.layers
    if fsdp:
        root = _numel(model) - sum(_numel(layer) for layer in layers)
        root_trainable = trainable - sum(_numel(layer, True) for layer in layers)
        # The root stays gathered from forward to the end of backward; a block is gathered while it computes
        # and the next one is prefetched.
        out["working"] = 2 * (root + 2 * max((_numel(layer) for layer in layers), default=0))
        # The largest unit's unsharded gradients: bf16 from backward, then an fp32 copy for the reduce-scatter.
        out["comm"] = 6 * max([root_trainable] + [_numel(layer, True) for layer in layers])
    else:
        out["working"] = 2 * (autocast_copies(model) + (merged_copies(model) if merged_lora else 0))
        # DDP all-reduces gradients through fp32 buckets that copy every trainable parameter's gradient.
        out["comm"] = 4 * trainable if devices > 1 else 0
    out["activations"], out["activations_checkpointed"] = activation_bytes(model, batch, seq_len, fsdp)
    states = out["weights"] + out["grads"] + out["optimizer"] + out["working"] + out["comm"]
    out["total"] = states + out["activations"]
    out["total_checkpointed"] = states + out["activations_checkpointed"]
    return out


def fits(total: int, device_memory: int) -> bool:
    """Whether `total` bytes of tensors fit in `device_memory`, after the runtime's own reserve."""
    return total + RUNTIME_RESERVE <= device_memory
