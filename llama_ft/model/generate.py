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
            share_prefix: bool = True) -> tuple[Tensor, KVCache, Tensor]:
    """(next-token logits after each prompt [B, vocab], the KV cache, the attention mask over it [B, past]).

    With `share_prefix`, the tokens all prompts start with (a fixed instruction, a demonstration) run once, at
    batch 1, and every row attends to their keys and values: the same tokens at the same positions, so the same
    logits, for a fraction of the work. The rows' own tokens are left-padded, so each row's last prompt token is
    in the final column.
    """
    device = next(model.parameters()).device
    cache = KVCache(model.config.num_hidden_layers)
    shared = shared_prefix_length(prompts) if share_prefix else 0
    if shared:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            model.model(torch.tensor([prompts[0][:shared]], device=device), kv_cache=cache)
        cache.layers = [(k.expand(len(prompts), -1, -1, -1), v.expand(len(prompts), -1, -1, -1))
                        for k, v in cache.layers]
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


@torch.inference_mode()
def generate(model: LlamaForCausalLM, prompts: list[list[int]], max_new_tokens: int = 32,
             stop_ids: list[int] | None = None, pad_id: int | None = None,
             amp: torch.dtype | None = None, share_prefix: bool = True) -> list[list[int]]:
    """Greedy continuations (new token ids only, stop token excluded) for each prompt, decoded as one batch
    (`share_prefix`: see prefill)."""
    device = next(model.parameters()).device
    cfg = model.config
    stop = set(stop_ids if stop_ids is not None else cfg.eos_ids)
    pad = pad_id if pad_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else 0)
    logits, cache, mask = prefill(model, prompts, pad, amp, share_prefix)
    out: list[list[int]] = [[] for _ in prompts]
    rows = list(range(len(prompts)))  # the prompts still decoding, in the batch's order
    for step in range(max_new_tokens):
        nxt: Tensor = logits.float().argmax(-1)
        keep = []
        for j, t in enumerate(nxt.tolist()):
            if t not in stop:
                out[rows[j]].append(t)
                keep.append(j)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(rows):
            # A finished row leaves the batch: the steps left (most replies are a few words, the longest sets the
            # batch's step count) compute and copy only the rows still decoding. Positions come from each row's
            # mask, which goes with it.
            sel = torch.tensor(keep, device=device)
            nxt, mask, rows = nxt[sel], mask[sel], [rows[j] for j in keep]
            cache.layers = [(k[sel], v[sel]) for k, v in cache.layers]
        mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(nxt[:, None], mask, kv_cache=cache, last_only=True)[:, -1]
    if device.type == "cpu":  # the cache grew by a copy a token: its old copies fragment the heap
        del cache, logits
        release_free_memory()
    return out
