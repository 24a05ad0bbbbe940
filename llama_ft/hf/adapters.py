"""LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`, written from a llama_ft
model and read back into one.

PEFT's layout, which `peft.PeftModel.from_pretrained(base, folder)` loads: every key starts with
`base_model.model.` followed by the transformers module name; the adapter of a Linear is `<name>.lora_A.weight`
[r, in] and `<name>.lora_B.weight` [out, r] (the adapter name, `default`, is left out of the file); a task head
that trains in full (`modules_to_save`) is stored under its own name (`base_model.model.score.weight`), not
under PEFT's in-memory `modules_to_save.default.` wrapper. The update is `(lora_alpha / r) * B @ A`, as in
`llama_ft.model.lora.LoRALinear`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from llama_ft.files import write_atomic
from llama_ft.hf.model_card import guess_base_model
from llama_ft.model.config import hub_id_for
from llama_ft.model.llama import LlamaPreTrainedModel
from llama_ft.model.lora import TARGETS, LoRALinear, add_lora
from llama_ft.model.policies import Policy, apply_policy

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
TASK_TYPES = {"classification": "SEQ_CLS", "qa": "QUESTION_ANS", "causal-lm": "CAUSAL_LM"}
# Settings llama_ft's LoRA has no counterpart for; set to anything but these, an adapter is refused.
UNSUPPORTED = {"use_dora": "DoRA's magnitude vectors", "bias": "trained biases",
               "lora_bias": "a bias on lora_B", "fan_in_fan_out": "transposed (Conv1D) weights",
               "rank_pattern": "a rank per module", "alpha_pattern": "an alpha per module",
               "layer_replication": "replicated layers", "trainable_token_indices": "trainable token rows",
               "target_parameters": "adapters on bare parameters", "alora_invocation_tokens": "activated LoRA",
               "use_qalora": "QALoRA", "use_bdlora": "block-diagonal LoRA"}
_LAYER = re.compile(r"\.layers\.(\d+)\.")


class AdapterError(ValueError):
    """An adapter that cannot be written or read as asked; the message names the file, field or argument."""


def _lora_weight(mod: LoRALinear, which: str) -> torch.Tensor:
    """The A or B matrix of a LoRA layer, whether it is a bare parameter or the weight of a Linear."""
    t = getattr(mod, f"lora_{which}")
    return t.weight if isinstance(t, torch.nn.Module) else t


def _unwrap(model: torch.nn.Module) -> LlamaPreTrainedModel:
    # torch.compile and DDP wrap the model; PEFT's names are those of the inner one.
    while not isinstance(model, LlamaPreTrainedModel):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            raise AdapterError(f"save_adapter needs a llama_ft task model, got {type(model).__name__}.")
        model = inner
    return model


def lora_layers(model: torch.nn.Module) -> dict[str, LoRALinear]:
    """{transformers module name: LoRA layer} of `model`."""
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, LoRALinear)}


def head_names(model: LlamaPreTrainedModel) -> list[str]:
    """The task heads PEFT keeps whole (`modules_to_save`): `score`, `qa_outputs`, an untied `lm_head`."""
    tied = getattr(model.config, "tie_word_embeddings", False)
    return [n for n, m in model.named_children()
            if m in model.head_modules() and not (n == "lm_head" and tied)]


def _layer_index(name: str) -> int:
    return int(_LAYER.search(f".{name}.").group(1))


def _targets(model: torch.nn.Module, names: list[str]) -> tuple[list[str] | str, list[int] | None]:
    """PEFT's `target_modules` and `layers_to_transform` that select exactly the modules `names`."""
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    layers = sorted({_layer_index(n) for n in names})
    product = {n for n, _ in model.named_modules()
               if n.rsplit(".", 1)[-1] in leaves and _LAYER.search(f".{n}.") and _layer_index(n) in layers}
    if product == set(names):
        return leaves, layers
    # Not every chosen layer has every chosen projection: a regex that PEFT full-matches against module names.
    return "|".join(re.escape(n) for n in sorted(names)), None


def _base_model_name(model: LlamaPreTrainedModel) -> str | None:
    source = getattr(model, "source", None)
    if source is not None and hub_id_for(str(source)):
        return hub_id_for(str(source))
    guessed = guess_base_model(model.config)
    if guessed:
        return guessed
    if source is not None and Path(str(source)).exists():
        return str(Path(str(source)).resolve())
    return None


def save_adapter(model: LlamaPreTrainedModel, folder: str | Path, base_model_name_or_path: str | None = None,
                 overwrite: bool = False) -> Path:
    """Write the LoRA adapters and task head of `model` as a PEFT adapter folder; returns its path.

    `base_model_name_or_path` (default: the Hub id or folder the model was loaded from) is what the adapter is
    applied to; its frozen weights must be those `model` was trained on (policy `lora:R`).
    """
    model = _unwrap(model)
    layers = lora_layers(model)
    if not layers:
        raise AdapterError("save_adapter: the model has no LoRA layers; train it with policy lora:R (or load one "
                           "with load_adapter), or write the whole model with llama_ft.save_pretrained.")
    policy = getattr(model, "policy", None)
    if policy is not None and (policy.kind == "full" or (policy.kind == "last" and policy.k)):
        raise AdapterError(f"save_adapter: the model carries policy {policy}, which changes frozen weights an "
                           "adapter does not hold; write it with llama_ft.save_pretrained.")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AdapterError(f"save_adapter: {folder} is a file; give a folder.")
    present = [f for f in (CONFIG, WEIGHTS) if (folder / f).exists()]
    if present and not overwrite:
        raise AdapterError(f"save_adapter: {folder} already holds {', '.join(present)}; pass overwrite=True to "
                           "replace the adapter or choose another folder.")
    ranks = {_lora_weight(m, "A").shape[0] for m in layers.values()}
    alphas = {round(m.scaling * _lora_weight(m, "A").shape[0], 6) for m in layers.values()}
    if len(ranks) > 1 or len(alphas) > 1:
        raise AdapterError(f"save_adapter: the LoRA layers have ranks {sorted(ranks)} and alphas {sorted(alphas)}; "
                           "PEFT's adapter_config.json holds one rank and one alpha.")
    (rank,), (alpha,) = ranks, alphas
    alpha = int(alpha) if float(alpha).is_integer() else alpha  # as PEFT writes it
    tensors = {}
    for name, mod in layers.items():
        for which in ("A", "B"):
            tensors[f"{PREFIX}{name}.lora_{which}.weight"] = _lora_weight(mod, which).detach().float().cpu()
    heads = head_names(model)
    for head in heads:
        for k, t in getattr(model, head).state_dict().items():
            tensors[f"{PREFIX}{head}.{k}"] = t.detach().float().cpu()
    targets, layers_to_transform = _targets(model, list(layers))
    n_layers = len(model.backbone.layers)
    dropout = next(iter(layers.values())).dropout
    config = {
        "peft_type": "LORA", "task_type": TASK_TYPES[model.task],
        "base_model_name_or_path": base_model_name_or_path or _base_model_name(model), "revision": None,
        "r": rank, "lora_alpha": alpha, "lora_dropout": float(getattr(dropout, "p", 0.0)),
        "target_modules": targets,
        "layers_to_transform": None if layers_to_transform == list(range(n_layers)) else layers_to_transform,
        "modules_to_save": heads or None, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "init_lora_weights": True, "inference_mode": True,
    }
    folder.mkdir(parents=True, exist_ok=True)
    # Config last: a folder with adapter_config.json holds a whole adapter.
    write_atomic(folder / WEIGHTS, save({k: t.contiguous() for k, t in tensors.items()}, metadata={"format": "pt"}))
    write_atomic(folder / CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def read_adapter_config(folder: Path) -> dict:
    """adapter_config.json of `folder`, checked for what llama_ft's LoRA can reproduce exactly."""
    path = folder / CONFIG
    if not path.is_file():
        raise AdapterError(f"{path} is missing: load_adapter needs a PEFT adapter folder (adapter_config.json and "
                           f"{WEIGHTS}), as peft's save_pretrained writes.")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{path}: not JSON ({e}); write it again with save_pretrained.") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{path}: peft_type {cfg.get('peft_type')!r}; llama_ft reads LORA adapters only.")
    if cfg.get("use_rslora"):
        raise AdapterError(f"{path}: use_rslora is true (scaling lora_alpha / sqrt(r)); llama_ft's LoRA scales by "
                           "lora_alpha / r. Use an adapter trained without rsLoRA.")
    for key, what in UNSUPPORTED.items():
        value = cfg.get(key)
        if value not in (None, False, {}, [], "none"):
            raise AdapterError(f"{path}: {key} = {value!r} ({what}) has no counterpart in llama_ft's LoRA; use an "
                               f"adapter saved without {key}.")
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)) or cfg[key] <= 0:
            raise AdapterError(f"{path}: {key} must be a positive number, got {cfg.get(key)!r}.")
    return cfg


def _adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS
    if not path.is_file():
        older = " (adapter_model.bin, a pickle, is not read: re-save it with safe_serialization)" \
            if (folder / "adapter_model.bin").is_file() else ""
        raise AdapterError(f"{path} is missing{older}.")
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"{path}: unreadable safetensors file ({e}); save the adapter again.") from None
    stray = [k for k in state if not k.startswith(PREFIX)]
    if stray:
        raise AdapterError(f"{path}: key {stray[0]!r} does not start with {PREFIX!r}; not a PEFT LoRA adapter.")
    return {k.removeprefix(PREFIX): t for k, t in state.items()}


def load_adapter(model: LlamaPreTrainedModel, folder: str | Path) -> LlamaPreTrainedModel:
    """Apply the PEFT LoRA adapter in `folder` to `model` (its base weights) in place; returns the model.

    The adapter's rank, alpha, dropout and target modules become LoRA layers (policy `lora:R[:alpha]`: adapters
    and task head trainable, the rest frozen), filled from adapter_model.safetensors with the task head.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"load_adapter: {folder} is not a folder; give the folder holding {CONFIG} and {WEIGHTS}.")
    cfg = read_adapter_config(folder)
    if lora_layers(model):
        raise AdapterError("load_adapter: the model already has LoRA layers; load the adapter into a model "
                           "freshly built with llama_ft.from_pretrained.")
    want = TASK_TYPES.get(model.task)
    if cfg.get("task_type") not in (None, want):
        raise AdapterError(f"{folder / CONFIG}: task_type {cfg['task_type']!r} is not this model's ({want}); load "
                           f"the base with llama_ft.from_pretrained(..., task="
                           f"{next((t for t, v in TASK_TYPES.items() if v == cfg['task_type']), '...')!r}).")
    state = _adapter_tensors(folder)
    rank, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    names = sorted({k.rsplit(".lora_", 1)[0] for k in state if ".lora_A." in k or ".lora_B." in k})
    modules = dict(model.named_modules())
    by_leaf: dict[str, set[int]] = {}
    for name in names:
        leaf = name.rsplit(".", 1)[-1]
        if name not in modules or leaf not in TARGETS or not _LAYER.search(f".{name}."):
            raise AdapterError(f"{folder / WEIGHTS}: adapter on {name!r}, which is not a decoder projection of this "
                               f"model ({', '.join(TARGETS)}); is the adapter for another architecture or task?")
        by_leaf.setdefault(leaf, set()).add(_layer_index(name))
    if not names:
        raise AdapterError(f"{folder / WEIGHTS}: no lora_A/lora_B tensors; not a LoRA adapter.")
    apply_policy(model, "head")  # everything frozen but the task head
    dropout = float(cfg.get("lora_dropout") or 0.0)
    for leaf, layer_ids in by_leaf.items():
        add_lora(model.backbone, rank, alpha, dropout, targets=(leaf,), layers=sorted(layer_ids))
    layers = lora_layers(model)
    missing = [f"{n}.lora_{w}.weight" for n in layers for w in "AB" if f"{n}.lora_{w}.weight" not in state]
    if missing:
        raise AdapterError(f"{folder / WEIGHTS} lacks {missing[0]}; the file is incomplete, save it again.")
    heads = {h: getattr(model, h) for h in head_names(model)}
    used = set()
    with torch.no_grad():
        for name, mod in layers.items():
            for which in "AB":
                key = f"{name}.lora_{which}.weight"
                _copy(_lora_weight(mod, which), state[key], folder / WEIGHTS, key)
                used.add(key)
        for head, mod in heads.items():
            for k, param in mod.state_dict(keep_vars=True).items():
                key = f"{head}.{k}"
                if key in state:
                    _copy(param, state[key], folder / WEIGHTS, key)
                    used.add(key)
    unused = sorted(set(state) - used)
    if unused:
        raise AdapterError(f"{folder / WEIGHTS}: {len(unused)} tensor(s) this model has no place for, e.g. "
                           f"{PREFIX}{unused[0]}; is the adapter for this task and model?")
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
    # The policy train() expects to find: `lora:R` when alpha is add_lora's default (2 R).
    model.policy = Policy("lora", rank=rank, alpha=None if alpha == 2 * rank else alpha)
    return model


def _copy(param: torch.Tensor, value: torch.Tensor, path: Path, key: str) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise AdapterError(f"{path}: {PREFIX}{key} has shape {tuple(value.shape)} but the model needs "
                           f"{tuple(param.shape)}; check `r` in {CONFIG} and that the base model is the one the "
                           "adapter was trained on.")
    param.copy_(value.to(param.dtype))
