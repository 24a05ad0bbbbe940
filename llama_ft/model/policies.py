"""Freezing policies: which parameters train (`head`, `last:K`, `lora:R[:alpha][:last:K]`, `full`)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from llama_ft.model.lora import add_lora

POLICY_HELP = "head | last:K | lora:R[:ALPHA][:last:K] | full"


@dataclass(frozen=True)
class Policy:
    kind: str          # head, last, lora, full
    k: int = 0         # layers for `last`; for `lora`, adapters on the top k blocks only (0: every block)
    rank: int = 0      # for `lora`
    alpha: float | None = None

    def __str__(self) -> str:
        lora = f"lora:{self.rank}" + (f":{self.alpha:g}" if self.alpha is not None else "") \
            + (f":last:{self.k}" if self.k else "")
        return {"head": "head", "full": "full", "last": f"last:{self.k}", "lora": lora}[self.kind]


def parse_policy(spec: str | Policy) -> Policy:
    """Parse `head`, `last:K`, `lora:R`, `lora:R:ALPHA` or `full`."""
    if isinstance(spec, Policy):
        return spec
    parts = str(spec).strip().lower().split(":")
    try:
        if parts == ["head"] or parts == ["full"]:
            return Policy(parts[0])
        if parts[0] == "last" and len(parts) == 2 and int(parts[1]) >= 0:
            return Policy("last", k=int(parts[1]))
        if parts[0] == "lora" and len(parts) >= 4 and parts[-2] == "last" and int(parts[-1]) > 0:
            # LoRA on the top K blocks only: the blocks below stay whole and frozen, so the trunk cache runs
            # them once and every epoch trains the top K alone.
            inner = parse_policy(":".join(parts[:-2]))
            return Policy("lora", k=int(parts[-1]), rank=inner.rank, alpha=inner.alpha)
        if parts[0] == "lora" and len(parts) in (2, 3) and int(parts[1]) > 0:
            return Policy("lora", rank=int(parts[1]), alpha=float(parts[2]) if len(parts) == 3 else None)
    except ValueError:
        pass
    raise ValueError(f"policy={spec!r} is not a policy; use {POLICY_HELP} (e.g. last:4, lora:8).")


def apply_policy(model: nn.Module, spec: str | Policy) -> Policy:
    """Set requires_grad on `model` for the policy (adding LoRA adapters for lora:R); returns the policy."""
    policy = parse_policy(spec)
    backbone = model.backbone
    n = len(backbone.layers)
    if policy.kind in ("last", "lora") and policy.k > n:
        raise ValueError(f"policy='{policy}' asks for more layers than the model has ({n}); use "
                         f"last:{n} or fewer.")
    if policy.kind == "lora":
        add_lora(backbone, policy.rank, policy.alpha, layers=list(range(n - policy.k, n)) if policy.k else None)
    for p in model.parameters():
        p.requires_grad_(policy.kind == "full")
    if policy.kind == "last" and policy.k:
        for layer in backbone.layers[n - policy.k:]:
            layer.requires_grad_(True)
        backbone.norm.requires_grad_(True)
    if policy.kind == "lora":
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
    for head in model.head_modules():
        # A tied LM head is the embedding matrix: training it is not "head only".
        if policy.kind != "full" and head is getattr(model, "lm_head", None) and model.config.tie_word_embeddings:
            continue
        head.requires_grad_(True)
    model.policy = policy
    return policy
