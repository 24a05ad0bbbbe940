"""Greedy decoding with a KV cache, batched with left padding (zero-shot baselines, smoke tests)."""
from __future__ import annotations

import torch
from torch import Tensor

from llama_ft.model.llama import KVCache, LlamaForCausalLM


@torch.inference_mode()
def generate(model: LlamaForCausalLM, prompts: list[list[int]], max_new_tokens: int = 32,
             stop_ids: list[int] | None = None, pad_id: int | None = None,
             amp: torch.dtype | None = None) -> list[list[int]]:
    """Greedy continuations (new token ids only, stop token excluded) for each prompt, decoded as one batch."""
    device = next(model.parameters()).device
    cfg = model.config
    stop = set(stop_ids if stop_ids is not None else cfg.eos_ids)
    pad = pad_id if pad_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else 0)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        # Left padding keeps every row's last prompt token in the final column, where decoding continues.
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    cache = KVCache(cfg.num_hidden_layers)
    out: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    step_ids = ids
    for _ in range(max_new_tokens):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(step_ids, mask, kv_cache=cache, last_only=True)
        nxt: Tensor = logits[:, -1].float().argmax(-1)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                if t in stop:
                    done[i] = True
                else:
                    out[i].append(t)
        if bool(done.all()):
            break
        step_ids = nxt[:, None]
        mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
    return out
