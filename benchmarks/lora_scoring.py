"""Scoring a trained LoRA model on real SQuAD windows: llama_ft with the adapters merged for the pass (what
`predict` does for a long pass), llama_ft with them unmerged (before), and transformers + PEFT (its default,
unmerged adapters), in the same run, on the same windows, batches and decoding.

    python benchmarks/lora_scoring.py --checkpoint RUN/checkpoint/model.safetensors [--questions 500]
        [--policy lora:16] [--threads 2] [--compile] [--json out.json]

The checkpoint is a run's trainable state (`train_squad.py --output-dir RUN` writes it); the frozen base is the
embedded model, bf16 as training leaves it. Each row predicts every window in length-sorted batches of 32 under
bf16 autocast, and decodes with the recipe's rule; eagerly, and with `--compile` also with the decoder blocks
compiled as `predict` compiles them for a long pass (a first pass compiles, the second is timed: compilation's
warm-up is not what is measured).
Prints JSON and a table: seconds, tokens/s, the ratio against transformers + PEFT (> 1: llama_ft faster), EM/F1,
the largest logit difference against the unmerged pass, and the merge's own seconds.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_ft  # noqa: E402
from benchmarks import train_step  # noqa: E402
from llama_ft.metrics import squad_em_f1  # noqa: E402
from llama_ft.model.lora import merged_adapters  # noqa: E402
from llama_ft.model.policies import apply_policy, parse_policy  # noqa: E402
from llama_ft.tasks.squad.data import load_squad  # noqa: E402
from llama_ft.tasks.squad.decode import answers, decode_predictions  # noqa: E402
from llama_ft.tasks.squad.scoring import QuestionSet  # noqa: E402
from llama_ft.train import loop, predict  # noqa: E402
from llama_ft.train.batching import collate, example_lengths, sorted_batches  # noqa: E402
from llama_ft.train.checkpoint import load_trainable  # noqa: E402

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad_v1.1" / "dev-v1.1-open.json.zip"
BATCH = 32


def trained_model(checkpoint: str, policy: str):
    model = llama_ft.from_pretrained("smollm2-135m", task="qa", seed=1)
    apply_policy(model, policy)
    for p in model.parameters():
        p.data = p.data.to(torch.float32 if p.requires_grad else torch.bfloat16)
    load_trainable(model, load_file(checkpoint), checkpoint)
    return model.eval()


def peft_twin(ours, policy: str):
    """transformers' LlamaForQuestionAnswering with our weights (bf16 frozen base, same head), PEFT's fp32
    adapters holding our adapter weights."""
    import transformers
    d = {k: v for k, v in ours.config.to_dict().items() if k != "architectures"}
    with torch.device("meta"):
        ref = transformers.LlamaForQuestionAnswering(transformers.LlamaConfig(**d))
    sd = {k: v.detach().clone() for k, v in ours.state_dict().items()}
    lora = {k: sd.pop(k) for k in [k for k in sd if ".lora_" in k]}
    missing, unexpected = ref.load_state_dict(sd, strict=False, assign=True)
    if unexpected or any("rotary" not in k for k in missing):
        raise RuntimeError(f"weights do not map onto transformers: missing {missing[:3]}, unexpected {unexpected[:3]}")
    ref.transformer.rotary_emb = type(ref.transformer.rotary_emb)(config=ref.config)
    return train_step.peft_twin(ref, parse_policy(policy), lora, task_type="QUESTION_ANS").eval()


@torch.inference_mode()
def predict_hf(model, dataset: list[dict], pad: int) -> list:
    """transformers' start/end logits per window, in the batches `predict` forms."""
    lengths = example_lengths(dataset)
    out: list = [None] * len(dataset)
    for idx in sorted_batches(lengths, BATCH):
        b = collate([dataset[i] for i in idx], pad)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            r = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        s, e = r.start_logits.float(), r.end_logits.float()
        for row, i in enumerate(idx):
            out[i] = (s[row, :lengths[i]].clone(), e[row, :lengths[i]].clone())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a run's checkpoint/model.safetensors (trainable state)")
    ap.add_argument("--policy", default="lora:16", help="the policy the run trained (its run_config.json)")
    ap.add_argument("--questions", type=int, default=500)
    ap.add_argument("--data", default=str(DEV))
    ap.add_argument("--threads", type=int)
    ap.add_argument("--no-hf", action="store_true", help="llama_ft only")
    ap.add_argument("--compile", action="store_true", help="also llama_ft with the blocks compiled")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = llama_ft.load_tokenizer("smollm2-135m")
    model = trained_model(args.checkpoint, args.policy)
    qs = QuestionSet("dev", load_squad(args.data).examples[:args.questions], tok, compile=False, progress=False)
    data = [w.as_example() for w in qs.windows]
    pad = model.config.pad_token_id
    tokens = int(example_lengths(data).sum())
    predict(model, data[-BATCH:], batch_size=BATCH, compile=False)  # warm-up: first-call allocations

    def ours(merge: bool, compiled: bool = False):
        def run():
            loop.MERGE_MIN_TOKENS = 0 if merge else 10**12
            return predict(model, data, batch_size=BATCH, compile=compiled)
        return run

    runs = {"llama_ft, adapters merged (now)": ours(True), "llama_ft, adapters unmerged (before)": ours(False)}
    if args.compile:
        for merge, name in ((True, "merged"), (False, "unmerged")):
            ours(merge, compiled=True)()  # compiles this variant's graphs; the timed pass reuses them
            runs[f"llama_ft compiled, adapters {name}"] = ours(merge, compiled=True)
    if not args.no_hf:
        twin = peft_twin(model, args.policy)
        runs["transformers + PEFT"] = lambda: predict_hf(twin, data, pad)
    res = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "questions": len(qs.examples), "windows": len(data), "tokens": tokens, "rows": []}
    logits = {}
    for name, fn in runs.items():
        t0 = time.perf_counter()
        logits[name] = fn()
        res["rows"].append({"run": name, "seconds": time.perf_counter() - t0})
    t0 = time.perf_counter()
    with merged_adapters(model) as n:
        res["merge_seconds"], res["adapters"] = time.perf_counter() - t0, n
    before = logits["llama_ft, adapters unmerged (before)"]
    peer = next((r["seconds"] for r in res["rows"] if r["run"] == "transformers + PEFT"), None)
    for r in res["rows"]:
        lg = logits[r["run"]]
        preds = decode_predictions(qs.examples, qs.windows, lg, qs.n_best, qs.max_answer_tokens, qs.rule)
        r.update(squad_em_f1(answers(preds), qs.refs))
        r["tokens_per_s"] = tokens / r["seconds"]
        r["ratio_vs_peft"] = peer / r["seconds"] if peer else None
        r["max_logit_diff_vs_unmerged"] = max(float((a - b).abs().max()) for x, y in zip(lg, before)
                                              for a, b in zip(x, y))
    print(json.dumps(res, indent=1))
    print(f"\n{res['questions']} questions, {res['windows']} windows, {tokens:,} tokens, {res['threads']} thread(s); "
          f"merging {res['adapters']} adapters took {res['merge_seconds']:.2f} s\n")
    print("| run | seconds | tokens/s | ratio vs PEFT | EM | F1 | max logit diff vs unmerged |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for r in res["rows"]:
        ratio = f"{r['ratio_vs_peft']:.2f}" if r["ratio_vs_peft"] else "-"
        print(f"| {r['run']} | {r['seconds']:.1f} | {r['tokens_per_s']:.0f} | {ratio} | {r['exact_match']:.2f} | "
              f"{r['f1']:.2f} | {r['max_logit_diff_vs_unmerged']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
