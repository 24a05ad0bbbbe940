"""Speed of all SQuAD metrics on 10,000 prediction/reference pairs, llama_ft.metrics vs the references.

    python benchmarks/metrics.py [--pairs 10000]

Pairs come from the SQuAD v1.1 dev answers in ../shared (exact, truncated, extended with context, shuffled,
empty), every gold answer a reference. Each metric runs once, in one process on one core, timed in CPU
seconds, after a warm-up that loads WordNet and the punkt tables (timed apart: both sides pay it once per
process). References: sacrebleu corpus_bleu; rouge-score's scorer with BootstrapAggregator seeded as evaluate
does; nltk's meteor_score on nltk.word_tokenize tokens as evaluate runs it. evaluate's "bleu" (tensorflow/nmt)
and the official SQuAD scripts are not installable libraries here, so those rows have no reference time.
Prints JSON, then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SQUAD_DEV = REPO.parent / "shared" / "data" / "squad_v1.1" / "dev-v1.1-open.json.zip"


def squad_pairs(n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """`n` predictions and their gold answers, drawn from the dev set with simple edits of a gold answer."""
    with zipfile.ZipFile(SQUAD_DEV) as archive:
        dataset = json.loads(archive.read("dev-v1.1-open.json"))
    questions = [
        (qa["answers"], p["context"]) for a in dataset["data"] for p in a["paragraphs"] for qa in p["qas"]
    ]
    rng = random.Random(seed)
    predictions, references = [], []
    for i in range(n):
        answers, context = questions[rng.randrange(len(questions))]
        gold, start = answers[0]["text"], answers[0]["answer_start"]
        words = gold.split()
        edit = i % 5
        if edit == 1:
            words = words[: max(1, len(words) - 1)]
        elif edit == 2:
            words = context[:start].split()[-2:] + words + context[start + len(gold) :].split()[:3]
        elif edit == 3:
            words = words + context[start + len(gold) :].split()[:4]
            rng.shuffle(words)
        elif edit == 4:
            words = []
        predictions.append(" ".join(words))
        references.append([answer["text"] for answer in answers])
    return predictions, references


def timed(function):
    """(CPU seconds of this process, value): CPU time, not wall time, so that other jobs matter less."""
    start = time.process_time()
    value = function()
    return time.process_time() - start, value


def ours(predictions, references):
    from llama_ft.metrics import bleu, meteor, rouge, sacrebleu_corpus_bleu, squad_v1, squad_v2
    from llama_ft.metrics.meteor import _lexicon

    qids = [str(i) for i in range(len(predictions))]
    preds, refs = dict(zip(qids, predictions)), dict(zip(qids, references))
    load, _ = timed(_lexicon)
    _lexicon().tokenize("Warm up the punkt tables.")
    rows = {
        "bleu (evaluate)": timed(lambda: bleu(predictions, references)["bleu"]),
        "sacrebleu corpus_bleu": timed(lambda: sacrebleu_corpus_bleu(predictions, references)["score"]),
        "exact_match + f1 (v1.1)": timed(lambda: squad_v1(preds, refs)["f1"]),
        "squad_v2 dict": timed(lambda: squad_v2(preds, refs)["best_f1"]),
        "rouge1/2/L/Lsum (bootstrap)": timed(lambda: rouge(predictions, references, seed=0)["rougeL"]),
        "meteor": timed(lambda: meteor(predictions, references)),
    }
    return load, rows


def reference(predictions, references):
    import nltk
    import numpy as np
    import sacrebleu
    from nltk.translate.meteor_score import meteor_score
    from rouge_score import rouge_scorer, scoring

    from llama_ft.metrics.nltk_data import require_root

    root = str(require_root())
    if root not in nltk.data.path:
        nltk.data.path.insert(0, root)
    from nltk.corpus import wordnet

    load, _ = timed(lambda: wordnet.synsets("warm"))
    nltk.word_tokenize("Warm up the punkt tables.")

    def sacre():
        streams = [
            [refs[k] if k < len(refs) else None for refs in references]
            for k in range(max(map(len, references)))
        ]
        return sacrebleu.corpus_bleu(predictions, streams, force=True).score  # force: only silences a warning

    def rouge():
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"])
        aggregator = scoring.BootstrapAggregator()
        for refs, prediction in zip(references, predictions):
            aggregator.add_scores(scorer.score_multi(refs, prediction))
        np.random.seed(0)
        return aggregator.aggregate()["rougeL"].mid.fmeasure

    def meteor():
        return float(
            np.mean(
                [
                    meteor_score([nltk.word_tokenize(r) for r in refs], nltk.word_tokenize(p))
                    for p, refs in zip(predictions, references)
                ]
            )
        )

    rows = {
        "sacrebleu corpus_bleu": timed(sacre),
        "rouge1/2/L/Lsum (bootstrap)": timed(rouge),
        "meteor": timed(meteor),
    }
    return load, rows


def main(argv: list[str] | None = None) -> int:
    """Run both sides, print the JSON record and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10_000)
    args = parser.parse_args(argv)
    predictions, references = squad_pairs(args.pairs)
    our_load, our_rows = ours(predictions, references)
    ref_load, ref_rows = reference(predictions, references)
    record = {
        "pairs": args.pairs,
        "cpu": os.cpu_count(),
        "python": sys.version.split()[0],
        "wordnet_load_s": {"ours": our_load, "reference": ref_load},
        "metrics": {
            name: {
                "ours_s": seconds,
                "ours_value": value,
                "reference_s": ref_rows[name][0] if name in ref_rows else None,
                "reference_value": ref_rows[name][1] if name in ref_rows else None,
            }
            for name, (seconds, value) in our_rows.items()
        },
    }
    total_ours = sum(seconds for seconds, _ in our_rows.values())
    compared = [name for name in our_rows if name in ref_rows]
    record["total_ours_s"] = total_ours
    record["compared_ours_s"] = sum(our_rows[name][0] for name in compared)
    record["compared_reference_s"] = sum(ref_rows[name][0] for name in compared)
    print(json.dumps(record, indent=2))
    print(f"\n{args.pairs} pairs | ours (s) | reference (s) | reference / ours | ours = reference")
    print("|---|---:|---:|---:|---|")
    for name, (seconds, value) in our_rows.items():
        if name in ref_rows:
            ref_seconds, ref_value = ref_rows[name]
            agree = (
                "yes" if abs(value - ref_value) <= 1e-9 * max(1.0, abs(ref_value)) else f"NO ({ref_value})"
            )
            print(f"| {name} | {seconds:.2f} | {ref_seconds:.2f} | {ref_seconds / seconds:.1f}x | {agree} |")
        else:
            print(f"| {name} | {seconds:.2f} | - | - | - |")
    print(f"| all SQuAD metrics | {total_ours:.2f} | - | - | - |")
    ours_s, reference_s = record["compared_ours_s"], record["compared_reference_s"]
    print(f"| the rows with a reference | {ours_s:.2f} | {reference_s:.2f} | {reference_s / ours_s:.1f}x | |")
    print(f"| WordNet load (once) | {our_load:.2f} | {ref_load:.2f} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
