"""Do transformers' question-answering pipeline and llama_ft's give the same answers from one QA export?

    python -m benchmarks.qa_pipeline_agreement runs/squad_pair \\
        --data ../shared/data/squad_v1.1/dev-v1.1-open.json.zip --limit 500 --json agreement.json
    python -m benchmarks.qa_pipeline_agreement tiny --data ../shared/data/squad_v1.1/dev-v1.1-open.json.zip

RUN `tiny`: a random 2-layer model (hidden 32) with the embedded SmolLM2 tokenizer, exported in the pair format
to a temporary folder (seconds per pipeline, near-uniform logits: the decoding's ties and sums are all exercised).

RUN is a train_squad.py run folder (or its model/ export). Both pipelines read the export in float32 on the CPU,
with the run's window geometry (max_length, stride) and longest answer (max_answer_tokens, transformers'
`max_answer_len`); transformers' pipeline answers one question at a time, as it does by default. Printed: a JSON
object, then a table: the share of identical answer strings and of identical (start, end) spans, the largest
score difference on identical answers, and each pipeline's exact match and F1 against the gold answers.

transformers removed its question-answering pipeline in version 5: run this with transformers < 5 (for example in
a virtual environment: `pip install "transformers<5"`). An export in the `template` format (train_squad.py's
default) is not what that pipeline builds, so its answers differ: only `--qa-format pair` exports agree.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import llama_ft
from llama_ft.metrics import squad_em_f1
from llama_ft.pipeline import QA_DEFAULTS, locate
from llama_ft.tasks.squad.data import load_squad, references
from llama_ft.tasks.squad.windows import pair_tokenizer


def compare(ours: list[dict], theirs: list[dict], refs: dict[str, list[str]], qids: list[str]) -> dict:
    """Agreement of two pipelines' answers to the same questions (`qids` in order), and each one's EM/F1."""
    n = len(qids)
    same = [a["answer"] == b["answer"] for a, b in zip(ours, theirs)]
    gaps = [abs(a["score"] - b["score"]) for a, b, s in zip(ours, theirs, same) if s]
    return {
        "questions": n,
        "identical_answers": sum(same) / n,
        "identical_spans": sum((a["start"], a["end"]) == (b["start"], b["end"]) for a, b in zip(ours, theirs)) / n,
        "max_score_difference": max(gaps, default=0.0),
        "llama_ft": squad_em_f1({q: a["answer"] for q, a in zip(qids, ours)}, refs),
        "transformers": squad_em_f1({q: a["answer"] for q, a in zip(qids, theirs)}, refs),
        "differences": [{"qid": q, "llama_ft": a["answer"], "transformers": b["answer"]}
                        for q, a, b, s in zip(qids, ours, theirs, same) if not s][:20],
    }


def table(result: dict) -> str:
    """A markdown table of `compare`'s result."""
    lines = ["| pipeline | exact match | F1 |", "|---|---:|---:|"]
    for name in ("llama_ft", "transformers"):
        lines.append(f"| {name} | {result[name]['exact_match']:.2f} | {result[name]['f1']:.2f} |")
    lines += ["", f"identical answers: {result['identical_answers']:.1%} of {result['questions']} questions; "
                  f"identical spans: {result['identical_spans']:.1%}; largest score difference on identical "
                  f"answers: {result['max_score_difference']:.2e}"]
    return "\n".join(lines)


def tiny_export(folder: Path) -> Path:
    """A random tiny QA model with the embedded SmolLM2 tokenizer, exported in the pair format."""
    cfg = llama_ft.LlamaConfig.from_dict(dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=49152, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        max_position_embeddings=2048))
    model = llama_ft.random_model(cfg, "qa", seed=0)
    with torch.no_grad():
        for head in model.head_modules():
            head.weight.normal_(0, 0.5)   # spread the span logits, so that answers differ between questions
    model.config.extra["qa_format"] = "pair"
    tokenizer = pair_tokenizer(llama_ft.load_tokenizer("smollm2-135m"))
    return llama_ft.save_pretrained(model, folder, dtype="float32", tokenizer=tokenizer)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a train_squad.py run folder or its model/ export, or `tiny`")
    ap.add_argument("--data", required=True, help="official SQuAD JSON (zipped or not)")
    ap.add_argument("--limit", type=int, default=500, help="the first K questions of --data")
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args(argv)
    try:
        from transformers import pipeline as hf_pipeline
        from transformers.pipelines import question_answering  # noqa: F401  (removed in transformers 5)
    except ImportError:
        sys.exit("this transformers has no question-answering pipeline (removed in version 5); run with "
                 "transformers < 5, e.g. in a virtual environment: pip install 'transformers<5'.")
    tmp = tempfile.TemporaryDirectory() if args.run == "tiny" else None
    folder, settings = locate(tiny_export(Path(tmp.name) / "model") if tmp else args.run)
    geometry = {k: settings.get(k) or QA_DEFAULTS[k] for k in ("max_length", "stride", "max_answer_tokens")}
    examples = load_squad(args.data).examples[:args.limit]
    qids, questions, contexts = ([ex.qid for ex in examples], [ex.question for ex in examples],
                                 [ex.context for ex in examples])
    t0 = time.perf_counter()
    ours = llama_ft.pipeline("question-answering", model=folder, dtype="float32", amp="none",
                             **geometry)(question=questions, context=contexts)
    t1 = time.perf_counter()
    ref = hf_pipeline("question-answering", model=str(folder), dtype=torch.float32, device="cpu")
    theirs = [ref(question=q, context=c, max_seq_len=geometry["max_length"], doc_stride=geometry["stride"],
                  max_answer_len=geometry["max_answer_tokens"]) for q, c in zip(questions, contexts)]
    t2 = time.perf_counter()
    result = {"export": str(folder), "data": args.data, "qa_format": settings.get("qa_format", "template"),
              **geometry, **compare(ours, theirs, references(examples), qids),
              "seconds": {"llama_ft": round(t1 - t0, 1), "transformers": round(t2 - t1, 1)}}
    print(json.dumps(result, indent=2))
    print("\n" + table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
