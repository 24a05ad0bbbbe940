"""The prompted zero-shot QA row's generation: llama_ft (shared prefix run once, and without it) against
transformers' `generate`, same weights, prompts, batches and stop tokens, in the same run.

    python benchmarks/generation.py [--questions 96] [--batch 16] [--decode-rows 64] [--prefill-rows 16]
        [--study 4000] [--rows recipe,recipe-unpacked,recipe-session22,recipe-prefix-only,prefix,plain]
        [--threads 1] [--json out.json]

Prompts are SQuAD dev questions spread evenly over the file (`--first`: the file's first ones, which come from
a few articles with short contexts; `--study N`: the first of the 1,000 test questions of `train_squad.py --n N`,
which share paragraphs as that row's do) in the recipe's zero-shot prompt (`qa_prompt`), longest first; greedy,
at most 24 new tokens, stopping at EOS or a newline. transformers and the plain llama_ft rows decode batches of
`--batch`; the recipe's row groups them as `answer_by_prompt` does (`decode_groups`: up to `--decode-rows`
prompts decode together, questions about one paragraph next to each other, prefilled `--prefill-rows` at a
time, the prefix every prompt starts with run once for all groups and, on a CPU, held once in the decoding cache;
`recipe-session22`: as session 22 ran it, each group's prefix its own and copied into every row's cache, memory
handed back after every group; `recipe-prefix-only`: the recipe with only the prefix every prompt starts with
shared, as before `prefix_runs`; `recipe-unpacked`: the recipe multiplying by the weights as they are, not by
copies laid out for oneDNN, `llama_ft.model.packed`). Prints a table and JSON: seconds per question, ratios
(> 1: llama_ft faster) and the share of identical replies.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from unittest.mock import patch

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_ft  # noqa: E402
from benchmarks.forward import hf_twin  # noqa: E402
from llama_ft.model import generate as gen  # noqa: E402
from llama_ft.model import packed  # noqa: E402
from llama_ft.model.generate import generate, shared_prefix_length  # noqa: E402
from llama_ft.tasks.squad.data import load_squad, study_split  # noqa: E402
from llama_ft.tasks.squad.zero_shot import DECODE_ROWS, PREFILL_ROWS, decode_groups, qa_prompt  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad_v1.1"
DEV = DATA / "dev-v1.1-open.json.zip"
TRAIN = DATA / "train-v1.1-rebuilt.json.zip"


def batches(prompts: list[list[int]], size: int) -> list[list[int]]:
    """Prompt indices, longest first, in batches of `size`."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    return [order[k:k + size] for k in range(0, len(order), size)]


def in_prompt_order(groups: list[list[int]], replies: list) -> list:
    """Replies produced group by group, put back in the prompts' order."""
    out = [None] * len(replies)
    for i, r in zip((i for g in groups for i in g), replies):
        out[i] = r
    return out


def run_recipe(lm, groups, stop, pad, prefill_rows: int, before: bool = False) -> tuple[float, list]:
    """The recipe's row as answer_by_prompt runs it: the prefix every prompt starts with run once for all groups
    and held once in the decoding cache (generate.PREFIX_APART, on a CPU), freed memory handed back once at the
    end. `before`: as session 22 ran it, each group its own prefix, copied into every row, memory handed back
    after every group."""
    settings = dict(max_new_tokens=24, stop_ids=stop, pad_id=pad, amp=torch.bfloat16, prefill_batch=prefill_rows)
    with patch.object(gen, "PREFIX_APART", not before):
        t = time.perf_counter()
        outs = ([generate(lm, g, **settings) for g in groups] if before
                else list(gen.generate_groups(lm, groups, **settings)))
        return time.perf_counter() - t, [r for out in outs for r in out]


def run_ours(lm, groups, stop, pad, share: bool, prefill_rows: int | None = None) -> tuple[float, list]:
    t = time.perf_counter()
    out = [r for g in groups for r in generate(lm, g, max_new_tokens=24, stop_ids=stop, pad_id=pad,
                                              amp=torch.bfloat16, share_prefix=share, prefill_batch=prefill_rows)]
    return time.perf_counter() - t, out


@torch.inference_mode()
def run_hf(ref, groups, stop, pad) -> tuple[float, list]:
    t = time.perf_counter()
    out = []
    for g in groups:
        width = max(len(p) for p in g)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in g])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in g])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            gen = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                               eos_token_id=stop, pad_token_id=pad)[:, width:].tolist()
        for row in gen:  # the reply up to (not including) the first stop token, as llama_ft returns it
            cut = next((i for i, t in enumerate(row) if t in stop), len(row))
            out.append(row[:cut])
    return time.perf_counter() - t, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=96)
    ap.add_argument("--first", action="store_true", help="the file's first questions, not an even spread")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--decode-rows", type=int, default=DECODE_ROWS, help="the recipe row's decode_groups rows")
    ap.add_argument("--prefill-rows", type=int, default=PREFILL_ROWS, help="the recipe row's prefill batch")
    ap.add_argument("--study", type=int, metavar="N", help="the test questions of train_squad.py --n N")
    ap.add_argument("--rows", type=lambda v: v.split(","), default=["recipe", "prefix", "plain"],
                    help="llama_ft's rows to run, comma-separated: recipe, recipe-unpacked, recipe-session22, "
                         "recipe-prefix-only, prefix, plain (transformers always runs, last; a row named again "
                         "runs again)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--data", help="the SQuAD file (default: dev-open; with --study, the train file)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = llama_ft.load_tokenizer("smollm2-135m")
    lm = llama_ft.from_pretrained("smollm2-135m", task="causal-lm", dtype="bf16").eval()
    ref = hf_twin(lm, torch.bfloat16)
    every = load_squad(args.data or (TRAIN if args.study else DEV)).examples
    if args.study:
        examples = study_split(every, args.study)[1][:args.questions]
    else:
        step = 1 if args.first else max(1, len(every) // args.questions)
        examples = every[::step][:args.questions]
    prompts = [qa_prompt(tok, ex.context, ex.question) for ex in examples]
    stop = list(tok.eos_token_ids) + tok.encode("\n", add_special_tokens=False)[:1]
    order = batches(prompts, args.batch)
    groups = [[prompts[i] for i in g] for g in order]
    run_ours(lm, groups[-1:], stop, tok.pad_token_id, True)   # warm-up: first-call allocations
    times = {}
    contexts = [ex.context for ex in examples]
    wide_order = decode_groups([len(p) for p in prompts], args.decode_rows, keys=contexts)
    wide = [[prompts[i] for i in g] for g in wide_order]
    recipe = f"llama_ft (recipe: decode up to {args.decode_rows}, prefill {args.prefill_rows})"
    # key: (row name, the run, the prompt indices of its groups, in the order it returns replies)
    runs = {"recipe": (recipe, lambda: run_recipe(lm, wide, stop, tok.pad_token_id, args.prefill_rows), wide_order),
            "recipe-session22": (f"{recipe}, as in session 22 (a prefix per group, copied into every row)",
                                 lambda: run_recipe(lm, wide, stop, tok.pad_token_id, args.prefill_rows, before=True),
                                 wide_order),
            "recipe-prefix-only": (f"{recipe}, only the common prefix shared (SHARE_RUNS off)",
                                   lambda: patch.object(gen, "SHARE_RUNS", False)(run_recipe)(
                                       lm, wide, stop, tok.pad_token_id, args.prefill_rows), wide_order),
            "recipe-unpacked": (f"{recipe}, weights not packed (packed.PACKED off)",
                                lambda: patch.object(packed, "PACKED", False)(run_recipe)(
                                    lm, wide, stop, tok.pad_token_id, args.prefill_rows), wide_order),
            "prefix": ("llama_ft (shared prefix)", lambda: run_ours(lm, groups, stop, tok.pad_token_id, True),
                       order),
            "plain": ("llama_ft (no sharing)", lambda: run_ours(lm, groups, stop, tok.pad_token_id, False), order),
            "transformers": ("transformers generate", lambda: run_hf(ref, groups, stop, tok.pad_token_id), order)}
    unknown = set(args.rows) - set(runs)
    if unknown:
        ap.error(f"--rows {','.join(sorted(unknown))}: choose from {','.join(runs)}")
    # In --rows' order; a row named again runs again (A/B in turns, as the host's speed drifts).
    keys = [k for k in args.rows if k != "transformers"] + ["transformers"]
    for i, key in enumerate(keys):
        name, fn, made_in = runs[key]
        if keys.count(key) > 1:
            name = f"{name} (turn {keys[:i + 1].count(key)})"
        sec, out = fn()
        times[name] = sec, in_prompt_order(made_in, out)
    base = times["transformers generate"]
    unshared = times.get("llama_ft (no sharing)", (None, None))[1]
    res = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "questions": len(prompts), "contexts": len(set(contexts)), "spread": not args.first,
           "study_n": args.study, "batch": args.batch,
           "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts), "prompt_tokens_max": max(map(len, prompts)),
           "shared_prefix_tokens_mean": sum(shared_prefix_length(g) for g in groups) / len(groups), "rows": []}
    for name, (sec, out) in times.items():
        same = sum(a == b for a, b in zip(out, base[1])) / len(out)
        res["rows"].append({"run": name, "seconds": sec, "s_per_question": sec / len(prompts),
                            "ratio_vs_transformers": base[0] / sec, "same_replies_as_transformers": same,
                            "same_replies_as_no_sharing": None if unshared is None else
                            sum(a == b for a, b in zip(out, unshared)) / len(out)})
    print(json.dumps(res, indent=1))
    print(f"\n{len(prompts)} questions ({len(set(contexts))} paragraphs), batch {args.batch}, "
          f"{res['threads']} thread(s), prompt "
          f"{res['prompt_tokens_mean']:.0f} tokens on average (longest {res['prompt_tokens_max']}), "
          f"{res['shared_prefix_tokens_mean']:.0f} of them "
          "shared by the batch on average\n")
    print("| run | s / question | ratio vs transformers | same replies as transformers | same as no sharing |\n"
          "|---|---:|---:|---:|---:|")
    for r in res["rows"]:
        print(f"| {r['run']} | {r['s_per_question']:.3f} | {r['ratio_vs_transformers']:.2f} | "
              f"{r['same_replies_as_transformers']:.1%} | "
              f"{'-' if r['same_replies_as_no_sharing'] is None else format(r['same_replies_as_no_sharing'], '.1%')} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
