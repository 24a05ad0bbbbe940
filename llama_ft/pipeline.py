"""Text in, predictions out: `pipeline("text-classification" | "question-answering", model=FOLDER_OR_RUN)`,
returning what transformers' pipelines of the same names return.

The model is an export (`save_pretrained`, a recipe's `runs/x/model`) or a run folder holding one; a run's
run_config.json supplies the settings it was trained with (sentence length, QA window geometry and decoding).
Questions are answered with the SQuAD recipe's own windows in the input format the model was trained on
(`tasks/squad/windows.py`; config.json's `qa_format`: `template`, llama_ft's prompt, or `pair`, the tokenizer's
question/context pair that transformers' question-answering pipeline builds) and its decoding
(`tasks/squad/decode.py`: the best span over all windows of a question; for `pair` the rule of transformers'
pipeline), the answer cut from the context by character offsets.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from llama_ft.hf.export import labels_of
from llama_ft.hf.loading import as_dtype, from_pretrained, load_tokenizer
from llama_ft.model.llama import TASKS, LlamaPreTrainedModel
from llama_ft.tasks.squad.data import SquadExample
from llama_ft.tasks.squad.decode import MAX_ANSWER_TOKENS, N_BEST, decode_predictions, decode_rule
from llama_ft.tasks.squad.windows import QA_FORMATS, window_builder
from llama_ft.tokenizer import TokenizerError
from llama_ft.train import predict

PIPELINE_TASKS = {"text-classification": "classification", "question-answering": "qa"}
QA_DEFAULTS = {"max_length": 384, "stride": 128, "n_best": N_BEST, "max_answer_tokens": MAX_ANSWER_TOKENS,
               "qa_format": "template"}
AMPS = ("none", "bf16", "fp16")


class PipelineError(ValueError):
    """A pipeline that cannot be built or run as asked: `argument` is the API argument at fault."""

    def __init__(self, argument: str, value: object, detail: str):
        self.argument, self.value, self.detail = argument, value, detail
        super().__init__(f"{argument}={value!r}: {detail}")


def locate(model: str | Path) -> tuple[Path, dict]:
    """(the export folder, its run's run_config.json or {}) for an export folder or a run folder."""
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        run = path.parent / "run_config.json" if path.name == "model" else path / "run_config.json"
    elif (path / "model" / "config.json").is_file():
        path, run = path / "model", path / "run_config.json"
    elif path.is_dir():
        unfinished = " (the run has not finished: no metrics.json)" if (path / "run_config.json").exists() or \
            (path / "checkpoint").exists() else ""
        raise PipelineError("model", str(model), f"neither an exported model (config.json) nor a run folder "
                                                 f"holding model/config.json{unfinished}.")
    else:
        raise PipelineError("model", str(model), "no such folder; give an export (llama_ft.save_pretrained) or a "
                                                 "recipe's run folder (runs/NAME).")
    try:
        settings = json.loads(run.read_text()) if run.is_file() else {}
    except json.JSONDecodeError as e:
        raise PipelineError("model", str(model), f"{run} is not JSON ({e}); fix or delete it.") from None
    return path, settings


def _check_task(folder: Path, task: str) -> None:
    """Refuse an export of another task before any weight is read."""
    arch = (json.loads((folder / "config.json").read_text()).get("architectures") or ["?"])[0]
    want = TASKS[PIPELINE_TASKS[task]].architecture
    if arch != want:
        other = next((t for t, k in PIPELINE_TASKS.items() if TASKS[k].architecture == arch), None)
        fix = f"use task={other!r}" if other else "fine-tune it first (train_sst2.py or train_squad.py)"
        raise PipelineError("model", str(folder), f"config.json says {arch}, not {want} as task={task!r} needs; "
                                                  f"{fix}.")


def pipeline(task: str, model: str | Path | LlamaPreTrainedModel, tokenizer=None, *, device: str = "cpu",
             dtype: str | torch.dtype = "float32", amp: str | None = None, batch_size: int = 32,
             max_length: int | None = None, progress: bool = False, **task_options):
    """A callable like transformers' pipeline of `task`, over an export folder, a run folder or a loaded model.

    `tokenizer`: a llama_ft Tokenizer or a source for `load_tokenizer` (default: the export's own). `device`
    and `dtype`: where and how a folder's weights are loaded (a loaded model is moved to `device`). `amp`:
    autocast (none, bf16, fp16; default none for fp32 weights, else the weights' dtype). `max_length`: tokens
    per text (classification: longer texts are cut; QA: per window), default the run's setting. QA takes
    `stride`, `n_best`, `max_answer_tokens` and `qa_format` too (defaults: the run's, else the SQuAD recipe's;
    `qa_format`: the export's config.json, else the run's, else `template`).
    """
    if task not in PIPELINE_TASKS:
        raise PipelineError("task", task, f"use one of {', '.join(PIPELINE_TASKS)}.")
    try:
        dtype = as_dtype(dtype)
    except ValueError as e:
        raise PipelineError("dtype", dtype, str(e)) from None
    settings: dict = {}
    if isinstance(model, LlamaPreTrainedModel):
        if model.task != PIPELINE_TASKS[task]:
            raise PipelineError("model", type(model).__name__, f"a {model.task} model cannot run task={task!r}.")
        if tokenizer is None:
            raise PipelineError("tokenizer", None, "a loaded model needs its tokenizer: pass tokenizer=.")
        net = model.to(device).eval()
    else:
        folder, settings = locate(model)
        _check_task(folder, task)
        net = from_pretrained(folder, task=PIPELINE_TASKS[task], dtype=dtype, device=device)
        tokenizer = folder if tokenizer is None else tokenizer
    try:
        tokenizer = load_tokenizer(tokenizer)
    except (TokenizerError, OSError) as e:
        raise PipelineError("tokenizer", str(tokenizer), f"{e} Pass tokenizer= (a folder, tokenizer.json or "
                                                         "preset name).") from None
    weights = next(net.parameters()).dtype
    amp = amp or {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(weights, "none")
    if amp not in AMPS:
        raise PipelineError("amp", amp, f"use one of {', '.join(AMPS)}.")
    if amp == "none" and weights != torch.float32:
        raise PipelineError("amp", amp, f"the weights are {weights}; use amp='bf16' or dtype='float32'.")
    if batch_size < 1:
        raise PipelineError("batch_size", batch_size, "give a positive number.")
    common = {"batch_size": batch_size, "amp": amp, "progress": progress}
    if task == "text-classification":
        if task_options:
            raise PipelineError(next(iter(task_options)), next(iter(task_options.values())),
                                "is a question-answering setting; text-classification takes max_length only.")
        cap = net.config.max_position_embeddings
        return TextClassificationPipeline(net, tokenizer, max_length=max_length or settings.get("max_length") or cap,
                                          **common)
    unknown = set(task_options) - set(QA_DEFAULTS)
    if unknown:
        raise PipelineError(sorted(unknown)[0], task_options[sorted(unknown)[0]],
                            f"not a question-answering setting; use {', '.join(QA_DEFAULTS)}.")
    settings = {**settings, **({"qa_format": net.config.extra["qa_format"]} if "qa_format" in net.config.extra
                               else {})}
    qa = {k: task_options.get(k) or settings.get(k) or v for k, v in QA_DEFAULTS.items()}
    if qa["qa_format"] not in QA_FORMATS:
        raise PipelineError("qa_format", qa["qa_format"], f"use one of {', '.join(QA_FORMATS)}.")
    if max_length:
        qa["max_length"] = max_length
    return QuestionAnsweringPipeline(net, tokenizer, **qa, **common)


class _Pipeline:
    def __init__(self, model: LlamaPreTrainedModel, tokenizer, *, batch_size: int, amp: str, progress: bool):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.amp, self.progress = batch_size, amp, progress
        self.device = next(model.parameters()).device

    def _forward(self, examples: list[dict], unit: str) -> list | torch.Tensor:
        """Model outputs for `examples` in their order (`predict`'s), in one pass over all of them: `auto`
        compilation then weighs the whole pass, whose length can repay the warm-up where a slice of it would not."""
        return predict(self.model, examples, self.batch_size, self.amp, self.device,
                       progress="" if self.progress else None, unit=unit)


def _texts(inputs, name: str) -> list[str]:
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    for i, t in enumerate(items):
        if not isinstance(t, str) or not t.strip():
            raise PipelineError(f"{name}[{i}]" if not isinstance(inputs, str) else name, t,
                                "give a non-empty string.")
    return items


class TextClassificationPipeline(_Pipeline):
    """`pipe(text)` -> [{"label", "score"}]; `pipe([texts])` -> one {"label", "score"} per text; top_k=None
    (or k > 1) gives each text its labels as a list, best first. Scores are softmax probabilities (sigmoid
    for a one-label model), labels the export's id2label."""

    def __init__(self, model, tokenizer, *, max_length: int, **common):
        super().__init__(model, tokenizer, **common)
        self.max_length = max_length
        self.labels = labels_of(model)

    def __call__(self, inputs: str | list[str], top_k: int | None = 1) -> list:
        texts = _texts(inputs, "inputs")
        examples = [{"input_ids": ids[:self.max_length]} for ids in self.tokenizer.encode_batch(texts)]
        logits = self._forward(examples, "text") if examples else torch.empty(0, len(self.labels))
        probs = logits.sigmoid() if logits.shape[-1] == 1 else logits.softmax(-1)
        k = probs.shape[-1] if top_k is None else min(top_k, probs.shape[-1])
        scores, ids = probs.topk(k, dim=-1)
        rows = [[{"label": self.labels[int(i)], "score": float(s)} for s, i in zip(sr, ir)]
                for sr, ir in zip(scores, ids)]
        if top_k == 1:
            return [r[0] for r in rows]
        return rows[0] if isinstance(inputs, str) else rows


class QuestionAnsweringPipeline(_Pipeline):
    """`qa(question=..., context=...)` -> {"answer", "score", "start", "end"}; lists of questions and contexts,
    or a list of {"question", "context"} dicts, give one such dict each. `start`/`end` are character offsets
    into the context (answer == context[start:end]); `score` is the span's probability in its window
    (softmax of start and end logits over the window's context tokens and its no-answer position; `pair`
    format: as transformers' pipeline scores it, the summed probabilities of the spans with that text)."""

    def __init__(self, model, tokenizer, *, max_length: int, stride: int, n_best: int, max_answer_tokens: int,
                 qa_format: str, **common):
        super().__init__(model, tokenizer, **common)
        self.max_length, self.stride, self.qa_format = max_length, stride, qa_format
        self.n_best, self.max_answer_tokens = n_best, max_answer_tokens

    def __call__(self, inputs: dict | list[dict] | None = None, *, question: str | list[str] | None = None,
                 context: str | list[str] | None = None) -> dict | list[dict]:
        single = isinstance(inputs, dict) or isinstance(question, str)
        pairs = self._pairs(inputs, question, context)
        builder = window_builder(self.tokenizer, self.max_length, self.stride, self.qa_format)
        pair = self.qa_format == "pair"   # transformers' pipeline encodes the question as given
        examples = [SquadExample(qid=str(i), title="", context=c, question=q if pair else q.strip(), answers=[],
                                 gold_texts=[]) for i, (q, c) in enumerate(pairs)]
        windows = [w for ex in examples for w in builder(ex)]
        logits = self._forward([{"input_ids": w.input_ids} for w in windows], "window")
        preds = decode_predictions(examples, windows, logits, self.n_best, self.max_answer_tokens,
                                   decode_rule(self.qa_format))
        where = {(w.qid, w.window): i for i, w in enumerate(windows)}
        out = []
        for ex in examples:
            best = preds[ex.qid].best
            if best is None:  # no verified context token to answer with
                out.append({"score": 0.0, "start": 0, "end": 0, "answer": ""})
                continue
            if pair:
                out.append({"score": math.exp(best.score), "start": best.start_char, "end": best.end_char,
                            "answer": best.text})
                continue
            i = where[(ex.qid, best.window)]
            w, (s, e) = windows[i], logits[i]
            keep = [w.context_start + j for j, sp in enumerate(w.offsets) if sp is not None] + [w.null_index]
            log_p = best.score - float(torch.logsumexp(s[keep], 0)) - float(torch.logsumexp(e[keep], 0))
            out.append({"score": math.exp(log_p), "start": best.start_char, "end": best.end_char,
                        "answer": best.text})
        return out[0] if single else out

    @staticmethod
    def _pairs(inputs, question, context) -> list[tuple[str, str]]:
        if inputs is not None:
            if question is not None or context is not None:
                raise PipelineError("inputs", "...", "give inputs= or question= and context=, not both.")
            items = [inputs] if isinstance(inputs, dict) else list(inputs)
            for i, d in enumerate(items):
                if not isinstance(d, dict) or not {"question", "context"} <= set(d):
                    raise PipelineError(f"inputs[{i}]", d, 'give a {"question": ..., "context": ...} dict.')
            question, context = [d["question"] for d in items], [d["context"] for d in items]
        elif question is None or context is None:
            raise PipelineError("question" if question is None else "context", None,
                                "give both question= and context= (or inputs=).")
        qs, cs = _texts(question, "question"), _texts(context, "context")
        if len(qs) != len(cs):
            raise PipelineError("context", f"{len(cs)} contexts", f"give one per question ({len(qs)}).")
        return list(zip(qs, cs))
