"""Export a task model as a Hugging Face folder that `transformers` loads unchanged, written atomically.

The folder is built in a hidden sibling (`.NAME.partial-*`) and renamed into place only when complete, with
config.json written last inside it: an interrupted export never leaves a folder at NAME, and a killed one
leaves only a hidden partial folder that holds no config.json until everything else is on disk. The next export
to NAME removes what a dead process (same host, by PID) left behind, and puts back a previous export that a
process killed between its two renames had moved aside.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from llama_ft.dtypes import as_dtype
from llama_ft.files import publish_folder, sweep_dead_publishes, write_atomic, write_json
from llama_ft.hf.loading import load_tokenizer
from llama_ft.hf.model_card import PIPELINES, guess_base_model, render_model_card
from llama_ft.hf.weights import save_weights, state_dict_for_saving
from llama_ft.model.llama import LlamaPreTrainedModel
from llama_ft.model.lora import LoRALinear
from llama_ft.tokenizer import choose_pad


class ExportError(ValueError):
    """An export that cannot be written as asked; the message names the folder or field and the fix."""


def save_pretrained(model: nn.Module, directory: str | Path, dtype: torch.dtype | str = torch.bfloat16,
                    tokenizer=None, overwrite: bool = False, max_shard_bytes: int = 5 * 2**30,
                    metrics: dict | None = None, card: dict | None = None) -> Path:
    """Write `model` as a transformers folder at `directory` and return its absolute path.

    The folder holds config.json (architectures, labels, pad_token_id, dtype), safetensors weights in `dtype`
    (sharded with an index above `max_shard_bytes`), the tokenizer's files when `tokenizer` is given (an
    object with `.save(dir)`, or a source for `llama_ft.load_tokenizer`), generation_config.json for a causal
    LM, and README.md (see `llama_ft.hf.model_card.render_model_card`) when `card` or `metrics` is given.
    LoRA adapters are folded into the exported tensors; `model` itself is left untouched (still unmerged).
    A non-empty `directory` is refused unless `overwrite`; it is then replaced only once the new folder is
    complete, and only when it looks like an earlier export (it holds config.json).
    """
    model = _unwrap(model)
    target = Path(os.path.abspath(directory))
    if target.parent.is_dir():
        sweep_dead_publishes(target)
    _check_target(target, overwrite)
    dtype = as_dtype(dtype)
    if tokenizer is not None and not hasattr(tokenizer, "save"):
        tokenizer = load_tokenizer(tokenizer)
    config = export_config(model, dtype, tokenizer)
    readme = None
    if card is not None or metrics is not None:
        # Rendered before any weight is written, so a card that cannot be built costs nothing.
        readme = render_model_card(card_info(model, config, dict(card or {}), metrics))
    state = export_state_dict(model, dtype)

    def build(folder: Path) -> None:
        save_weights(state, folder, max_shard_bytes)
        if tokenizer is not None:
            tokenizer.save(folder)
        if model.task == "causal-lm":
            write_json(folder / "generation_config.json", generation_config(config))
        if readme is not None:
            write_atomic(folder / "README.md", readme)
        write_atomic(folder / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")

    def keep_existing(existing: Path) -> bool:
        _check_target(existing, overwrite)  # again: the folder may have been filled while we wrote
        return False

    return publish_folder(build, target, keep_existing)


# ---------------------------------------------------------------------------------------------- contents
def _unwrap(model: nn.Module) -> LlamaPreTrainedModel:
    # torch.compile and DDP/FSDP wrap the model; the names transformers expects are those of the inner one.
    while not isinstance(model, LlamaPreTrainedModel):
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            raise ExportError(f"save_pretrained needs a llama_ft task model (LlamaForCausalLM, "
                              f"LlamaForSequenceClassification, LlamaForQuestionAnswering), got "
                              f"{type(model).__name__}.")
        model = inner
    return model


def labels_of(model: LlamaPreTrainedModel) -> dict[int, str]:
    """id -> label name: `model.id2label` (dict or list), else config.json's `id2label`, else LABEL_i."""
    n = model.num_labels
    given = getattr(model, "id2label", None) or model.config.extra.get("id2label")
    if isinstance(given, (list, tuple)):
        given = dict(enumerate(given))
    labels = {int(k): str(v) for k, v in (given or {}).items()}
    if sorted(labels) != list(range(n)):
        labels = {i: f"LABEL_{i}" for i in range(n)}
    if len(set(labels.values())) != n:
        raise ExportError(f"id2label {labels} repeats a name; label2id needs {n} distinct label names.")
    return labels


def _looks_local(name: object) -> bool:
    return isinstance(name, str) and (os.path.isabs(name) or name.startswith((".", "~"))
                                      or os.path.exists(name))


def export_config(model: LlamaPreTrainedModel, dtype: torch.dtype, tokenizer=None) -> dict:
    """The config.json dictionary of an export: transformers field names, this model's class and dtype."""
    cfg = model.config
    d = cfg.to_dict()
    d["architectures"] = [model.architecture]
    # `dtype` is what transformers >= 4.56 reads; `torch_dtype` what older releases read.
    d["dtype"] = d["torch_dtype"] = str(dtype).removeprefix("torch.")
    if _looks_local(d.get("_name_or_path")):
        d.pop("_name_or_path")  # a path on this machine means nothing on the Hub
    for k in ("id2label", "label2id", "num_labels"):
        d.pop(k, None)
    if model.task == "classification":
        labels = labels_of(model)
        d["id2label"] = {str(i): name for i, name in labels.items()}
        d["label2id"] = {name: i for i, name in labels.items()}
    tok_pad = getattr(tokenizer, "pad_token_id", None)
    if d.get("pad_token_id") is None:
        # transformers' classifier pools on input_ids != pad_token_id and refuses batches without one.
        # Recorded under the name LlamaConfig passes through (values as llama_ft.tokenizer names them).
        if tok_pad is not None:
            d["pad_token_id"] = tok_pad
            d["pad_token_id_source"] = getattr(tokenizer, "pad_token_source", "tokenizer")
        else:
            pad, source = choose_pad(None, None, cfg.eos_ids[0] if cfg.eos_ids else None)
            if pad is not None:
                d["pad_token_id"], d["pad_token_id_source"] = pad, source
        if d.get("pad_token_id") is None and model.task == "classification":
            raise ExportError("the model has no pad_token_id and no eos_token_id, and no tokenizer was "
                              "given: transformers cannot pool a padded batch. Set "
                              "model.config.pad_token_id.")
    elif model.task == "classification" and tok_pad is not None and tok_pad != d["pad_token_id"]:
        raise ExportError(
            f"config pad_token_id {d['pad_token_id']} differs from the tokenizer's pad id {tok_pad}: "
            "transformers would pad with one and pool on the other. Set model.config.pad_token_id to the "
            "tokenizer's pad id (and check the model was trained with it).")
    if tokenizer is not None and hasattr(tokenizer, "check_fits"):
        tokenizer.check_fits(cfg.vocab_size, "the exported model")
    return d


def generation_config(config: dict) -> dict:
    """generation_config.json of a causal LM: its special tokens (greedy decoding unless the user says so)."""
    g = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
    return {"_from_model_config": True, **g}


@torch.no_grad()
def export_state_dict(model: LlamaPreTrainedModel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """transformers-named tensors in `dtype`: LoRA folded in (the model untouched), tied weights once."""
    state = state_dict_for_saving(model)
    for name, mod in model.named_modules():
        if isinstance(mod, LoRALinear):
            del state[f"{name}.lora_A"], state[f"{name}.lora_B"]
            state[f"{name}.weight"] = mod.merged(torch.float32).weight.detach().cpu()  # rounded once, below
    leftovers = [k for k in state if "lora_" in k.rsplit(".", 1)[-1]]
    if leftovers:
        raise ExportError(f"adapter tensors {leftovers[:3]} are not LoRALinear layers llama_ft can merge; "
                          "merge them into their weights before exporting.")
    meta = [k for k, t in state.items() if t.is_meta]
    if meta:
        raise ExportError(f"{len(meta)} tensor(s) live on the meta device (e.g. {meta[0]}): load or "
                          "initialise the weights before exporting.")
    return {k: t.to(dtype) if t.is_floating_point() else t for k, t in state.items()}


def card_info(model: LlamaPreTrainedModel, config: dict, card: dict, metrics: dict | None) -> dict:
    """The model-card info of an export: `card` completed with the task, labels, dtype and base model."""
    info = {"task": model.task, "pipeline_tag": PIPELINES[model.task], **card}
    if metrics is not None:
        info["metrics"] = metrics
    info.setdefault("base_model", guess_base_model(model.config))
    info.setdefault("dtype", config["dtype"])
    if model.task == "classification":
        info.setdefault("labels", labels_of(model))
    if model.task == "qa":
        info.setdefault("qa_format", config.get("qa_format", "template"))
    return info


# ---------------------------------------------------------------------------------------------- folders
def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} is a file; save_pretrained writes a folder. Choose another path.")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not overwrite:
        names = sorted(p.name for p in target.iterdir())
        raise ExportError(f"{target} is not empty ({len(names)} entries, e.g. {', '.join(names[:3])}); "
                          "pass overwrite=True to replace it once the new export is complete, or choose "
                          "another folder.")
    if not (target / "config.json").is_file():
        raise ExportError(f"{target} holds no config.json, so it is not an earlier export; overwrite=True "
                          "only replaces exported model folders. Empty it yourself or choose another folder.")
