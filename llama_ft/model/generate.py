"""Greedy decoding with a KV cache, batched with left padding (zero-shot baselines, smoke tests)."""
from __future__ import annotations

import os

import torch
from torch import Tensor

from llama_ft.heap import release_free_memory
from llama_ft.model.llama import KVCache, LlamaForCausalLM

# A shared prefix shorter than this is not worth a separate forward.
MIN_SHARED_PREFIX = 8


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one token of its own (its last token's logits
    start the reply)."""
    n = len(os.path.commonprefix(prompts)) if len(prompts) > 1 else 0
    n = min(n, min(len(p) for p in prompts) - 1)
    return n if n >= MIN_SHARED_PREFIX else 0


def prefill(model: LlamaForCausalLM, prompts: list[list[int]], pad: int, amp: torch.dtype | None = None,
            share_prefix: bool = True, batch_size: int | None = None,
            reserve: int = 0) -> tuple[Tensor, KVCache, Tensor]:
    """(next-token logits after each prompt [B, vocab], the KV cache, the attention mask over it [B, past]).

    With `share_prefix`, the tokens all prompts start with (a fixed instruction, a demonstration) run once, at
    batch 1, and every row attends to their keys and values: the same tokens at the same positions, so the same
    logits, for a fraction of the work. The rows' own tokens are left-padded, so each row's last prompt token is
    in the final column. `batch_size`: the prompts run through the model this many at a time (a wider batch
    pads more), and their caches are joined into one batch to decode.
    `reserve`: room for this many more positions in the cache (KVCache.reserve).
    """
    device = next(model.parameters()).device
    shared = shared_prefix_length(prompts) if share_prefix else 0
    prefix = KVCache(model.config.num_hidden_layers)
    if shared:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            model.model(torch.tensor([prompts[0][:shared]], device=device), kv_cache=prefix)
    step = batch_size or len(prompts)
    parts = [_prefill_own(model, prompts[i:i + step], pad, amp, prefix, shared, device)
             for i in range(0, len(prompts), step)]
    if len(parts) == 1:
        logits, cache, mask = parts[0]
        if reserve:
            cache.reserve(reserve)
        return logits, cache, mask
    return _join(parts, reserve)


def _prefill_own(model, prompts, pad, amp, prefix: KVCache, shared: int, device):
    """prefill for one batch of prompts whose first `shared` tokens are already in `prefix` (batch 1)."""
    cache = KVCache(model.config.num_hidden_layers)
    if shared:
        cache.layers = [(k.expand(len(prompts), -1, -1, -1), v.expand(len(prompts), -1, -1, -1))
                        for k, v in prefix.layers]
        prompts = [p[shared:] for p in prompts]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    # Positions count real tokens only, so a row's own tokens follow the prefix whatever its padding.
    mask = torch.zeros((len(prompts), shared + width), dtype=torch.long)
    mask[:, :shared] = 1
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, shared + width - len(p):] = 1
    mask = mask.to(device)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        logits = model(ids.to(device), mask, kv_cache=cache, last_only=True)
    return logits[:, -1], cache, mask


def _join(parts: list[tuple[Tensor, KVCache, Tensor]], reserve: int) -> tuple[Tensor, KVCache, Tensor]:
    """One batch from several prefilled ones: each row right-aligned (more left padding for the shorter
    batches, which the mask hides and positions skip), in buffers with room for `reserve` more positions."""
    width = max(m.shape[1] for _, _, m in parts)
    rows = sum(m.shape[0] for _, _, m in parts)
    first = parts[0][1]
    cache = KVCache(len(first.layers))
    mask = parts[0][2].new_zeros(rows, width)
    for i, kv in enumerate(first.layers):
        bufs = tuple(x.new_zeros(rows, x.shape[1], width + reserve, x.shape[3]) for x in kv)
        r = 0
        for _, c, m in parts:
            n, w = m.shape
            for b, x in zip(bufs, c.layers[i]):
                b[r:r + n, :, width - w:width].copy_(x)
            c.layers[i] = None  # the batch's own copy can go now
            r += n
        cache.use_buffers(i, bufs, width)
    r = 0
    for _, _, m in parts:
        mask[r:r + m.shape[0], width - m.shape[1]:] = m
        r += m.shape[0]
    return torch.cat([lg for lg, _, _ in parts]), cache, mask


# Finished rows stay in the batch (their tokens ignored) until at most this share of it is still decoding; then
# the batch shrinks to those rows. Shrinking copies the whole cache, so it waits until it halves the batch.
COMPACT_AT = 0.5


@torch.inference_mode()
def generate(model: LlamaForCausalLM, prompts: list[list[int]], max_new_tokens: int = 32,
             stop_ids: list[int] | None = None, pad_id: int | None = None,
             amp: torch.dtype | None = None, share_prefix: bool = True,
             prefill_batch: int | None = None) -> list[list[int]]:
    """Greedy continuations (new token ids only, stop token excluded) for each prompt, decoded as one batch
    (`share_prefix`, `prefill_batch`: see prefill's `share_prefix` and `batch_size`)."""
    device = next(model.parameters()).device
    cfg = model.config
    stop = set(stop_ids if stop_ids is not None else cfg.eos_ids)
    pad = pad_id if pad_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else 0)
    logits, cache, mask = prefill(model, prompts, pad, amp, share_prefix, prefill_batch, reserve=max_new_tokens)
    out: list[list[int]] = [[] for _ in prompts]
    rows = list(range(len(prompts)))  # the prompt in each row of the batch
    live = [True] * len(rows)         # rows still decoding
    for step in range(max_new_tokens):
        nxt: Tensor = logits.float().argmax(-1)
        for j, t in enumerate(nxt.tolist()):
            if live[j]:
                if t in stop:
                    live[j] = False
                else:
                    out[rows[j]].append(t)
        n_live = sum(live)
        if not n_live or step == max_new_tokens - 1:
            break
        if n_live <= COMPACT_AT * len(rows):
            # The longest reply sets the batch's step count and most replies are a few words: the steps left
            # compute and copy only the rows still decoding. Positions come from each row's mask, which goes
            # with it.
            keep = [j for j in range(len(rows)) if live[j]]
            sel = torch.tensor(keep, device=device)
            nxt, mask, rows, live = nxt[sel], mask[sel], [rows[j] for j in keep], [True] * len(keep)
            cache.select(sel)
        mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(nxt[:, None], mask, kv_cache=cache, last_only=True)[:, -1]
    if device.type == "cpu":  # the cache's buffers and the prefill's copies fragment the heap
        del cache, logits
        release_free_memory()
    return out
