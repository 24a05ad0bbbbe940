"""Greedy decoding with a KV cache, batched with left padding (zero-shot baselines, smoke tests)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from llama_ft.heap import keep_freed_pages, release_free_memory
from llama_ft.model.llama import KVCache, LlamaForCausalLM
from llama_ft.model.packed import packed_weights

# A shared prefix shorter than this is not worth a separate forward.
MIN_SHARED_PREFIX = 8
# Off: prefill shares only the prefix every prompt starts with, not what consecutive prompts share beyond it
# (prefix_runs; benchmarks/generation.py compares the two).
SHARE_RUNS = True
# On a CPU the prefix every prompt starts with stays a single batch-1 copy in the decoding cache, which every row
# attends to (llama.prefix_decode_attention), instead of a copy in every row that each decoding step reads again
# (BENCHMARKS.md, session 23). Elsewhere, or off, each row holds its own copy.
PREFIX_APART = True


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one token of its own (its last token's logits
    start the reply)."""
    n = len(os.path.commonprefix(prompts)) if len(prompts) > 1 else 0
    n = min(n, min(len(p) for p in prompts) - 1)
    return n if n >= MIN_SHARED_PREFIX else 0


@dataclass
class SharedPrefix:
    """The tokens every prompt of a set starts with and their keys and values at batch 1 (computed by
    shared_prefix): a caller that prefills the set in several calls passes it to each, and the prefix runs once."""
    tokens: list[int]
    cache: KVCache


@torch.inference_mode()
def shared_prefix(model: LlamaForCausalLM, prompts: list[list[int]], amp: torch.dtype | None = None) -> SharedPrefix:
    """The prefix all `prompts` share (shared_prefix_length; none when shorter than MIN_SHARED_PREFIX), run once."""
    n = shared_prefix_length(prompts)
    cache = KVCache(model.config.num_hidden_layers)
    if n:
        device = next(model.parameters()).device
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            model.model(torch.tensor([prompts[0][:n]], device=device), kv_cache=cache)
    return SharedPrefix(list(prompts[0][:n]), cache)


def prefix_runs(prompts: list[list[int]], shared: int) -> list[tuple[int, int, int]]:
    """Runs of consecutive prompts that start with the same tokens beyond the `shared` ones all prompts start
    with (questions about one paragraph, after a fixed instruction): (first, end, n) for prompts[first:end],
    whose first n tokens are common to the run. A run of several prompts shares at least MIN_SHARED_PREFIX
    tokens more than `shared`, and each of its prompts keeps a token of its own; a prompt that shares nothing
    more with the next one is a run of its own (n: its length)."""
    runs: list[tuple[int, int, int]] = []
    i = 0
    while i < len(prompts):
        j, n = i + 1, len(prompts[i]) - 1
        while j < len(prompts):
            m = min(len(os.path.commonprefix([prompts[i], prompts[j]])), n, len(prompts[j]) - 1)
            if m < shared + MIN_SHARED_PREFIX:
                break
            j, n = j + 1, m
        runs.append((i, j, n if j - i > 1 else len(prompts[i])))
        i = j
    return runs


def prefill(model: LlamaForCausalLM, prompts: list[list[int]], pad: int, amp: torch.dtype | None = None,
            share_prefix: bool = True, batch_size: int | None = None,
            reserve: int = 0, prefix: SharedPrefix | None = None) -> tuple[Tensor, KVCache, Tensor]:
    """(next-token logits after each prompt [B, vocab], the KV cache, the attention mask over it [B, past]).

    With `share_prefix`, tokens that several prompts start with run once. The tokens all prompts start with (a
    fixed instruction, a demonstration) run at batch 1, and every row attends to their keys and values. Then,
    where consecutive prompts share more (several questions about one paragraph, `prefix_runs`), each run's
    common part runs once, its prompts attend to it, and only their own ends run per prompt. The same tokens at
    the same positions give the same logits, for a fraction of the work. Each level's tokens are left-padded,
    the mask hides the padding and positions count real tokens only, so each row's last prompt token is in the
    final column. `batch_size`: the prompts (where consecutive ones share a run: the runs) go through the model
    this many at a time (a wider batch pads more), and their caches are joined into one batch to decode, a row
    per prompt in the prompts' order. `reserve`: room for this many more positions in the cache
    (KVCache.reserve). `prefix`: shared_prefix() of a set these prompts belong to, which then does not run again
    (with `share_prefix`; every prompt must start with its tokens and have one of its own after them).
    """
    device = next(model.parameters()).device
    if not share_prefix:
        prefix = SharedPrefix([], KVCache(model.config.num_hidden_layers))
    elif prefix is None:
        prefix = shared_prefix(model, prompts, amp)
    elif (bad := next((i for i, p in enumerate(prompts)
                       if len(p) <= len(prefix.tokens) or p[:len(prefix.tokens)] != prefix.tokens), None)) is not None:
        raise ValueError(f"prefill(prefix=...): prompt {bad} does not start with the prefix's {len(prefix.tokens)} "
                         "tokens and a token of its own after them; pass shared_prefix() of a set it belongs to.")
    shared, prefix = len(prefix.tokens), prefix.cache
    apart = bool(shared) and PREFIX_APART and device.type == "cpu"
    runs = (prefix_runs(prompts, shared) if share_prefix and SHARE_RUNS
            else [(i, i + 1, len(p)) for i, p in enumerate(prompts)])
    step = batch_size or len(prompts)
    parts = []
    for i in range(0, len(runs), step):
        alone = [a for a, b, _ in runs[i:i + step] if b - a == 1]
        together = [r for r in runs[i:i + step] if r[1] - r[0] > 1]
        if alone:
            parts.append((*_prefill_rows(model, [prompts[a][shared:] for a in alone], pad, amp,
                                         _expand(prefix, len(alone)), shared, device), alone))
        if together:
            parts.append((*_prefill_runs(model, prompts, together, pad, amp, prefix, shared, device),
                          [j for a, b, _ in together for j in range(a, b)]))
    if apart:  # each part's rows start with the prefix's positions: they go, and the prefix stays once
        parts = [(lg, _after(c, shared), m[:, shared:], idx) for lg, c, m, idx in parts]
    if len(parts) == 1:
        logits, cache, mask, _ = parts[0]  # its rows are the prompts in order
        if reserve:
            cache.reserve(reserve)
    else:
        logits, cache, mask = _join(parts, reserve)
    if apart:
        cache.set_prefix(prefix.layers)
        mask = torch.cat((mask.new_ones(mask.shape[0], shared), mask), dim=1)
    return logits, cache, mask


def _after(cache: KVCache, n: int) -> KVCache:
    """The cache's positions after its first n (views)."""
    out = KVCache(len(cache.layers))
    out.layers = [(k[:, :, n:], v[:, :, n:]) for k, v in cache.layers]
    return out


def _expand(prefix: KVCache, rows: int) -> KVCache:
    """The batch-1 `prefix` as `rows` rows (views, no copy)."""
    cache = KVCache(len(prefix.layers))
    if prefix.seq_len:
        cache.layers = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in prefix.layers]
    return cache


def _prefill_rows(model, segments: list[list[int]], pad: int, amp, cache: KVCache, past: Tensor | int, device,
                  logits: bool = True):
    """Run one segment per row after the row's cached past: `cache` ([B, ...] per layer, or empty) and `past`,
    its mask [B, P] (an int P: P real positions in every row). The segments are left-padded. Returns (the
    next-token logits after each segment [B, vocab], or None without `logits`; the cache; the mask over it)."""
    width = max(len(s) for s in segments)
    ids = torch.full((len(segments), width), pad, dtype=torch.long)
    own = torch.zeros((len(segments), width), dtype=torch.long)
    for i, s in enumerate(segments):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        own[i, width - len(s):] = 1
    if isinstance(past, int):
        past = torch.ones((len(segments), past), dtype=torch.long, device=device)
    # Positions count real tokens only, so a row's tokens follow its past whatever the padding on either level.
    mask = torch.cat((past, own.to(device)), dim=1)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        if not logits:
            model.model(ids.to(device), mask, kv_cache=cache)
            return None, cache, mask
        out = model(ids.to(device), mask, kv_cache=cache, last_only=True)
    return out[:, -1], cache, mask


def _prefill_runs(model, prompts, runs: list[tuple[int, int, int]], pad, amp, prefix: KVCache, shared: int, device):
    """prefill for the prompts of these runs (each of several prompts): each run's common tokens after `prefix`
    once (a row per run), then each prompt's own end after its run's (a row per prompt)."""
    _, common, common_mask = _prefill_rows(model, [prompts[a][shared:n] for a, _, n in runs], pad, amp,
                                           _expand(prefix, len(runs)), shared, device, logits=False)
    run_of = torch.tensor([r for r, (a, b, _) in enumerate(runs) for _ in range(a, b)], device=device)
    cache = KVCache(len(common.layers))
    cache.layers = [(k[run_of], v[run_of]) for k, v in common.layers]
    del common
    return _prefill_rows(model, [prompts[i][n:] for a, b, n in runs for i in range(a, b)], pad, amp, cache,
                         common_mask[run_of], device)


def _join(parts: list[tuple[Tensor, KVCache, Tensor, list[int]]], reserve: int) -> tuple[Tensor, KVCache, Tensor]:
    """One batch from several prefilled ones (logits, cache, mask, and the prompt index of each row): the row of
    prompt i is row i, right-aligned (more left padding for the narrower batches, which the mask hides and
    positions skip), in buffers with room for `reserve` more positions."""
    first_logits, first, first_mask, _ = parts[0]
    width = max(m.shape[1] for _, _, m, _ in parts)
    rows = sum(len(idx) for *_, idx in parts)
    where = [torch.tensor(idx, device=first_mask.device) for *_, idx in parts]
    cache = KVCache(len(first.layers))
    for i, kv in enumerate(first.layers):
        bufs = tuple(x.new_zeros(rows, x.shape[1], width + reserve, x.shape[3]) for x in kv)
        for (_, c, m, _), at in zip(parts, where):
            w = m.shape[1]
            for b, x in zip(bufs, c.layers[i]):
                b[at, :, width - w:width] = x
            c.layers[i] = None  # the batch's own copy can go now
        cache.use_buffers(i, bufs, width)
    mask = first_mask.new_zeros(rows, width)
    logits = first_logits.new_empty(rows, first_logits.shape[-1])
    for (lg, _, m, _), at in zip(parts, where):
        mask[at, width - m.shape[1]:] = m
        logits[at] = lg
    return logits, cache, mask


# Finished rows stay in the batch (their tokens ignored) until at most this share of it is still decoding; then
# the batch shrinks to those rows. Shrinking copies the whole cache, so it waits until it halves the batch.
COMPACT_AT = 0.5


@torch.inference_mode()
def generate(model: LlamaForCausalLM, prompts: list[list[int]], max_new_tokens: int = 32,
             stop_ids: list[int] | None = None, pad_id: int | None = None,
             amp: torch.dtype | None = None, share_prefix: bool = True,
             prefill_batch: int | None = None, release_memory: bool = True,
             prefix: SharedPrefix | None = None) -> list[list[int]]:
    """Greedy continuations (new token ids only, stop token excluded) for each prompt, decoded as one batch
    (`share_prefix`, `prefill_batch`, `prefix`: see prefill's `share_prefix`, `batch_size` and `prefix`; a
    caller that generates batch after batch of one set passes shared_prefix() of the whole set, which then runs
    once instead of once a batch). `release_memory`: on a CPU, hand the freed heap back to the system afterwards
    (llama_ft.heap); a caller that generates batch after batch passes False and releases once at the end, so that
    each batch reuses the pages the one before it freed instead of faulting them in again."""
    device = next(model.parameters()).device
    if device.type == "cpu":
        keep_freed_pages()
    cfg = model.config
    stop = set(stop_ids if stop_ids is not None else cfg.eos_ids)
    pad = pad_id if pad_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else 0)
    with packed_weights(model):
        out = _generate(model, device, prompts, max_new_tokens, stop, pad, amp, share_prefix, prefill_batch, prefix)
    if device.type == "cpu" and release_memory:  # the cache's buffers and the prefill's copies fragment the heap
        release_free_memory()
    return out


def _generate(model, device, prompts, max_new_tokens, stop, pad, amp, share_prefix, prefill_batch, prefix):
    """generate()'s prefill and decoding steps (its arguments, the model's device, `stop` a set and `pad`
    resolved)."""
    logits, cache, mask = prefill(model, prompts, pad, amp, share_prefix, prefill_batch, reserve=max_new_tokens,
                                  prefix=prefix)
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
    return out


def generate_groups(model: LlamaForCausalLM, groups: list[list[list[int]]], **kwargs) -> Iterator[list[list[int]]]:
    """generate() for each group of prompts of one set, in turn (yields each group's continuations): the prefix
    every prompt of the set starts with runs once for all groups (shared_prefix), and on a CPU the freed heap is
    handed back once, after the last group, so each group reuses the pages the one before it freed. `kwargs`:
    generate's, but for `prefix` and `release_memory`."""
    try:
        with packed_weights(model):  # once for all groups
            prefix = shared_prefix(model, [p for g in groups for p in g], kwargs.get("amp"))
            for prompts in groups:
                yield generate(model, prompts, **kwargs, prefix=prefix, release_memory=False)
    finally:
        # After the packed copies and the prefix's cache are gone, so that their pages go back too.
        prefix = None
        if next(model.parameters()).device.type == "cpu":
            release_free_memory()
