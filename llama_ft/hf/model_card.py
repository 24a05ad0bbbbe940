"""Model card: README.md with Hub metadata (license, base model, datasets, model-index) and the recipe."""
from __future__ import annotations

import math
import re
import warnings
from pathlib import PurePath

from huggingface_hub import EvalResult, ModelCardData

from llama_ft.model.config import LlamaConfig
from llama_ft.sources.hub_ids import is_repo_id, looks_like_hub_id

# Licenses of the base models llama_ft is used with (Hub license ids).
BASE_LICENSES = {
    "HuggingFaceTB/SmolLM2-135M": "apache-2.0",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0",
    "HuggingFaceTB/SmolLM2-360M-Instruct": "apache-2.0",
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": "apache-2.0",
    "meta-llama/Llama-3.2-1B": "llama3.2",
    "meta-llama/Llama-3.2-1B-Instruct": "llama3.2",
    "meta-llama/Llama-3.2-3B": "llama3.2",
    "meta-llama/Llama-3.2-3B-Instruct": "llama3.2",
    "meta-llama/Llama-3.1-8B": "llama3.1",
    "meta-llama/Llama-3.1-8B-Instruct": "llama3.1",
}
# Evaluation sets: Hub id -> how model-index names them.
DATASETS = {
    "stanfordnlp/sst2": {"name": "SST-2", "split": "validation"},
    "nyu-mll/glue": {"name": "GLUE SST-2", "config": "sst2", "split": "validation"},
    "rajpurkar/squad": {"name": "SQuAD v1.1", "split": "validation"},
}
TASK_NAMES = {"text-classification": "Text Classification", "question-answering": "Question Answering",
              "text-generation": "Text Generation"}
PIPELINES = {"classification": "text-classification", "qa": "question-answering",
             "causal-lm": "text-generation"}
AUTO_CLASSES = {"text-classification": "AutoModelForSequenceClassification",
                "question-answering": "AutoModelForQuestionAnswering",
                "text-generation": "AutoModelForCausalLM"}
METRIC_NAMES = {"accuracy": "Accuracy", "f1": "F1", "exact_match": "Exact Match", "em": "Exact Match",
                "eval_loss": "Loss", "loss": "Loss", "precision": "Precision", "recall": "Recall",
                "mcc": "MCC"}
METRIC_TYPES = {"em": "exact_match", "eval_loss": "loss"}
# metrics.json entries that describe the run, not the model's quality: kept out of model-index.
_NOT_RESULTS = re.compile(r"^(step|steps|epoch|examples|samples|tokens)$"
                          r"|(_s|_seconds|_time|per_second|_tokens)$")


class ModelCardError(ValueError):
    """Model-card info that cannot become valid Hub metadata; the message names the key and the fix."""


def guess_base_model(cfg: LlamaConfig) -> str | None:
    """The Hub id `cfg` was loaded from: its `_name_or_path`, or a known model a local file is named after."""
    name = cfg.extra.get("_name_or_path")
    if not isinstance(name, str) or not name:
        return None
    if looks_like_hub_id(name):  # `runs/ckpt` (a folder here) looks like owner/name but is not one
        return name
    stem = PurePath(name).name.split(".")[0].lower()  # SmolLM2-135M-Instruct.Q4_1.gguf: smollm2-135m-instruct
    return next((hub for hub in BASE_LICENSES if hub.split("/")[1].lower() == stem), None)


def _results(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or _NOT_RESULTS.search(k):
            continue
        if not math.isfinite(v):
            warnings.warn(f"model card: metric {k!r} is {v}; left out (Hub metadata needs finite numbers).",
                          stacklevel=3)
            continue
        out[k] = float(v)
    return out


def _table(rows: dict, header: tuple[str, str] = ("name", "value")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in rows.items()]
    return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def render_model_card(info: dict) -> str:
    """README.md text: YAML front matter (Hub metadata) and a body with results, policy and reproduction.

    info keys: task ("classification" | "qa" | "causal-lm") or pipeline_tag (required); base_model (Hub id);
    license (default: the base model's, from BASE_LICENSES); datasets (Hub ids); eval_dataset ({"type",
    "name", "config", "split"}; default: the first dataset); metrics (name -> number, the run's final
    evaluation; bookkeeping such as step or tokens/s is left out of model-index); policy (str or dict);
    hyperparameters (dict); command (str); model_name; repo_id; tags; language; labels (id -> name); dtype;
    description; qa_format (QA: "template" or "pair", the input format the model was trained on; the card
    states it and how to call the model). A value that is malformed is an error; one that is missing (no base
    model, license or dataset known) is left out of the metadata with a warning, so an export at the end of a
    run never fails for want of card details.
    """
    pipeline = info.get("pipeline_tag") or PIPELINES.get(info.get("task", ""))
    if pipeline not in TASK_NAMES:
        raise ModelCardError(f"model card: give `task` ({', '.join(PIPELINES)}) or `pipeline_tag` "
                             f"({', '.join(TASK_NAMES)}); got task={info.get('task')!r}.")
    base = info.get("base_model")
    if base is not None and not is_repo_id(base):
        raise ModelCardError(f"model card: `base_model` must be the Hub id of the model fine-tuned "
                             f"(owner/name, e.g. HuggingFaceTB/SmolLM2-135M-Instruct), got {base!r}.")
    license_ = info.get("license") or BASE_LICENSES.get(base)
    missing = [k for k, v in (("base_model", base), ("license", license_)) if not v]
    datasets = info.get("datasets") or []
    datasets = [datasets] if isinstance(datasets, str) else list(datasets)
    name = info.get("model_name") or (info.get("repo_id") or "").split("/")[-1] or \
        f"{(base or 'llama_ft').split('/')[-1]}-{pipeline}"
    results = _results(info.get("metrics") or {})
    eval_results = None
    ds = dict(DATASETS.get(datasets[0], {}), type=datasets[0]) if datasets else {}
    ds.update(info.get("eval_dataset") or {})
    if results and not ds.get("type"):
        missing.append("datasets")  # model-index must name the dataset a metric was measured on
    elif results:
        eval_results = [
            EvalResult(task_type=pipeline, task_name=TASK_NAMES[pipeline], dataset_type=ds["type"],
                       dataset_name=ds.get("name", ds["type"]), dataset_config=ds.get("config"),
                       dataset_split=ds.get("split"), metric_type=METRIC_TYPES.get(k, k),
                       metric_name=METRIC_NAMES.get(k, k), metric_value=v)
            for k, v in results.items()]
    if missing:
        keys = ", ".join(f"'{k}': ..." for k in missing)
        warnings.warn(f"model card: no {', '.join(missing)} known, so the Hub metadata leaves it out; pass "
                      f"card={{{keys}}} (base_model: the Hub id fine-tuned; license: its Hub license id; "
                      "datasets: the Hub ids of the training and evaluation sets).", stacklevel=2)
    tags = ["llama_ft", "llama", "fine-tuned", *(info.get("tags") or [])]
    data = ModelCardData(
        base_model=base, license=license_, datasets=datasets or None, language=info.get("language"),
        library_name="transformers", pipeline_tag=pipeline, tags=list(dict.fromkeys(tags)),
        model_name=name, eval_results=eval_results)
    body = _body(info, name, base, license_, pipeline, datasets, ds.get("split"), results)
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def _body(info: dict, name: str, base: str | None, license_: str | None, pipeline: str,
          datasets: list[str], split: str | None, results: dict[str, float]) -> str:
    links = ", ".join(f"[{d}](https://huggingface.co/datasets/{d})" for d in datasets)
    on = f" on {links}" if datasets else ""
    task = TASK_NAMES[pipeline].lower()
    model = f"[{base}](https://huggingface.co/{base})" if base else "A Llama-family model"
    parts = [f"# {name}",
             (f"{model} fine-tuned for {task}{on} with llama_ft, a pure-PyTorch fine-tuning library. The "
              "checkpoint is a plain `transformers` folder: it loads without llama_ft installed.")]
    if info.get("description"):
        parts.append(str(info["description"]))
    if results:
        where = f" on the {split} split" if split else ""
        parts += ["## Results", f"Evaluation{where}, from the run's metrics.json:",
                  _table(results, ("metric", "value"))]
    labels = info.get("labels")
    if labels:
        parts += ["## Labels", _table({str(k): v for k, v in labels.items()}, ("id", "label"))]
    policy = info.get("policy")
    if policy:
        parts += ["## Training policy", _table(policy) if isinstance(policy, dict) else str(policy)]
    hp = info.get("hyperparameters")
    if hp:
        parts += ["## Hyper-parameters", _table(hp)]
    if info.get("command"):
        parts += ["## Reproduce", f"```bash\n{info['command']}\n```"]
    repo = info.get("repo_id") or f"path/to/{name}"
    auto = AUTO_CLASSES[pipeline]
    parts += ["## Use", "```python\nfrom transformers import AutoTokenizer, " + auto + "\n\n"
              f"tokenizer = AutoTokenizer.from_pretrained(\"{repo}\")\n"
              f"model = {auto}.from_pretrained(\"{repo}\")\n```"]
    if pipeline == "question-answering":
        parts += _qa_input_format(info.get("qa_format", "template"), repo, info.get("hyperparameters") or {})
    if info.get("dtype"):
        parts.append(f"Weights are stored in {info['dtype']}.")
    if license_ and license_.startswith("llama"):
        parts += ["## License",
                  f"Built with Llama. Use is governed by the {license_} community license of the base model."]
    elif license_:
        parts += ["## License", f"{license_}, the license of the base model."]
    return "\n\n".join(parts) + "\n"


def _qa_input_format(qa_format: str, repo: str, hp: dict) -> list[str]:
    """The card's "Input format" section of a QA model: what it was trained on and how to call it."""
    if qa_format == "pair":
        geometry = f", max_seq_len={hp['max_length']}, doc_stride={hp['stride']}" if "max_length" in hp else ""
        return ["## Input format",
                "Trained on the tokenizer's own question/context pair, `[BOS] question EOS context EOS` (the "
                "template in tokenizer.json's post-processor; BOS only where the tokenizer adds one), the context "
                "cut into overlapping windows, answers only on context tokens, widened to whole words: what "
                "transformers' question-answering pipeline builds and decodes (transformers < 5; version 5 "
                "removed that pipeline). llama_ft's `pipeline(\"question-answering\")` answers the same.",
                "```python\nfrom transformers import pipeline\n\n"
                f"qa = pipeline(\"question-answering\", model=\"{repo}\")\n"
                f"qa(question=\"Where is the Eiffel Tower?\", context=\"The Eiffel Tower is in Paris.\", "
                f"max_answer_len=30{geometry})\n```"]
    if qa_format != "template":
        raise ModelCardError(f"model card: `qa_format` must be 'template' or 'pair', got {qa_format!r}.")
    return ["## Input format",
            "Trained on llama_ft's prompt windows, `[BOS]Question: {question}\\nContext:\\n{context}\\nAnswer:` "
            "(question, `\\nContext:\\n` and `\\nAnswer:` tokenised apart; the no-answer position is the last "
            "token). transformers' question-answering pipeline does NOT build this input, so its answers would "
            "differ: use llama_ft's `pipeline(\"question-answering\", model=...)`, or build the input yourself:",
            "```python\nimport torch\n\n"
            "def ids(text):\n    return tokenizer(text, add_special_tokens=False)[\"input_ids\"]\n\n"
            "question, context = \"Where is the Eiffel Tower?\", \"The Eiffel Tower is in Paris.\"\n"
            "ctx = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)\n"
            "head = tokenizer(\"\")[\"input_ids\"] + ids(\"Question: \" + question) + ids(\"\\nContext:\\n\")\n"
            "with torch.no_grad():\n"
            "    out = model(torch.tensor([head + ctx[\"input_ids\"] + ids(\"\\nAnswer:\")]))\n"
            "n = len(ctx[\"input_ids\"])\n"
            "start = out.start_logits[0, len(head):len(head) + n]\n"
            "end = out.end_logits[0, len(head):len(head) + n]\n"
            "scores, i = start[:, None] + end[None, :], torch.arange(n)\n"
            "scores[(i[None, :] < i[:, None]) | (i[None, :] - i[:, None] >= 30)] = float(\"-inf\")\n"
            "s, e = divmod(int(scores.argmax()), n)\n"
            "print(context[ctx[\"offset_mapping\"][s][0]:ctx[\"offset_mapping\"][e][1]].strip())\n```",
            "Contexts longer than one window need llama_ft's windows (`llama_ft.tasks.squad.windows`)."]
