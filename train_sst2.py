"""Fine-tune a Llama-family model on GLUE SST-2 and print the study's table.

    python train_sst2.py --preset study                  # the study: Llama-3.2-1B, head only, its hyper-parameters
    python train_sst2.py --model smollm2-135m --data ../shared/data/sst2 --max-train 16000 --max-test 2000

Rows: the untrained model with a random head (the study's "pre-trained"), the causal LM prompted zero-shot
(as it answers, and batch-calibrated: its label bias removed without labels), and the fine-tuned model.
Outputs in --output-dir: metrics.json, results.md, confusion.png, loss.png, run_config.json,
train_log.jsonl and the fine-tuned model (model/, Hugging Face layout).
"""
from __future__ import annotations

import argparse
import sys
import time

import llama_ft
from llama_ft.cli.run_folder import (
    add_run_arguments,
    command_line,
    device_and_amp,
    finish_run,
    prepare_output_dir,
    write_json,
)
from llama_ft.metrics import classification_report, format_classification_table
from llama_ft.model.policies import POLICY_HELP
from llama_ft.plots import confusion_matrix_plot, loss_curve
from llama_ft.tasks.sst2 import data as sst2
from llama_ft.tasks.sst2.zero_shot import batch_calibrate, classify_by_prompt
from llama_ft.train import TrainConfig, predict, train

CALIBRATED = "zero-shot (prompt, batch-calibrated)"
# The study's hyper-parameters, and ours (chosen by measurement: see README "Results").
PRESETS = {
    "study": dict(train="head", lr=2e-4, weight_decay=0.01, schedule="linear", warmup_ratio=0.0,
                  batch_size=16, epochs=3, max_length=128),
    # last:4 trains the top 4 blocks on a cached trunk. Chosen on SmolLM2-135M (README "Choosing the default"):
    # 88.1% on 16,000 sentences and 3 epochs vs 81.1% on 4,000 and 2 at lr 1e-4 (first session's split); on
    # the study split it reaches 85.70% on the 16,000 subset and 90.81% on all 53,879 sentences.
    "default": dict(train="last:4", lr=2e-4, weight_decay=0.01, schedule="cosine", warmup_ratio=0.05,
                    batch_size=32, epochs=3, max_length=128),
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", default="meta-llama/Llama-3.2-1B",
                    help="folder, .gguf, Hub id or embedded name (smollm2-135m); default: the study's model")
    ap.add_argument("--data", default=None,
                    help="GLUE SST-2 folder or labelled file (.tsv, .jsonl, .parquet); default: the Hub (nyu-mll/glue)")
    ap.add_argument("--split", choices=("study", "glue"), default="study",
                    help="study: all labelled rows 80:20 stratified, seed 1; glue: train vs the validation file")
    ap.add_argument("--eval-file", help="also evaluate on this labelled file after training")
    ap.add_argument("--max-train", type=int, help="stratified subset of the training rows (after the split)")
    ap.add_argument("--max-test", type=int, help="stratified subset of the test rows (after the split)")
    ap.add_argument("--preset", choices=tuple(PRESETS), default="default")
    ap.add_argument("--train", help=f"freezing policy: {POLICY_HELP}")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--weight-decay", type=float)
    ap.add_argument("--schedule", choices=("linear", "cosine"))
    ap.add_argument("--warmup-ratio", type=float)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--max-length", type=int, help="tokens per sentence (longer ones are cut)")
    add_run_arguments(ap, output_dir="runs/sst2")
    args = ap.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def load_splits(args) -> tuple[list, list]:
    data = sst2.load_sst2(args.data)
    if args.split == "study":
        pool = data["train"] + data.get("validation", [])
        train_rows, test_rows = sst2.stratified_split(pool, 0.2, seed=1)
        print(f"SST-2 study split: {len(pool):,} labelled rows -> {len(train_rows):,} train / {len(test_rows):,} test")
    else:
        if "validation" not in data:
            raise sst2.DataError("--split glue needs a validation file (dev.tsv) next to train.tsv; "
                                 "use --split study otherwise.")
        train_rows, test_rows = data["train"], data["validation"]
        print(f"SST-2 GLUE split: {len(train_rows):,} train / {len(test_rows):,} validation")
    train_rows = sst2.subsample(train_rows, args.max_train, seed=args.seed)
    test_rows = sst2.subsample(test_rows, args.max_test, seed=args.seed)
    if args.max_train or args.max_test:
        print(f"subset: {len(train_rows):,} train / {len(test_rows):,} test (stratified, seed {args.seed})")
    return train_rows, test_rows


def evaluate_rows(model, rows, tokenizer, args, amp) -> dict:
    logits = predict(model, sst2.encode(rows, tokenizer, args.max_length), batch_size=64, amp=amp)
    return classification_report([r.label for r in rows], logits.argmax(-1).tolist())


def main(argv=None) -> int:
    args = parse_args(argv)
    out = prepare_output_dir(args.output_dir, args.overwrite, args.resume)
    t_start = time.perf_counter()
    device, amp = device_and_amp(args.device, args.amp, study=args.preset == "study")
    train_rows, test_rows = load_splits(args)
    extra_rows = sst2.read_file(args.eval_file) if args.eval_file else None  # a bad file fails now, not after training
    tokenizer = llama_ft.load_tokenizer(args.model)
    rows_report: dict[str, dict] = {}
    timings: dict[str, float] = {}

    if not args.no_zero_shot:
        t0 = time.perf_counter()
        lm = llama_ft.from_pretrained(args.model, task="causal-lm", dtype="bf16" if amp != "none" else "fp32",
                                      device=device)
        pred, p_pos = classify_by_prompt(lm, tokenizer, [r.sentence for r in test_rows],
                                         amp=None if amp == "none" else llama_ft.hf.loading.as_dtype(amp))
        gold = [r.label for r in test_rows]
        rows_report["zero-shot (prompt)"] = classification_report(gold, pred.tolist())
        if len(test_rows) > 1:
            rows_report[CALIBRATED] = classification_report(gold, batch_calibrate(p_pos).tolist())
        timings["zero_shot_prompt_seconds"] = time.perf_counter() - t0
        del lm

    model = llama_ft.from_pretrained(args.model, task="classification", num_labels=2, device=device, seed=args.seed)
    model.id2label = dict(enumerate(sst2.LABELS))
    if not args.no_zero_shot:
        t0 = time.perf_counter()
        rows_report["pre-trained (random head)"] = evaluate_rows(model, test_rows, tokenizer, args, amp)
        timings["random_head_seconds"] = time.perf_counter() - t0

    cfg = TrainConfig(policy=args.train, lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
                      warmup_ratio=args.warmup_ratio, batch_size=args.batch_size, epochs=args.epochs,
                      amp=amp, seed=args.seed, output_dir=str(out), resume=args.resume, device=device,
                      compile=args.compile)
    t0 = time.perf_counter()
    result = train(model, sst2.encode(train_rows, tokenizer, args.max_length), cfg)
    timings["train_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    finetuned = f"fine-tuned ({args.train})"
    rows_report[finetuned] = evaluate_rows(model, test_rows, tokenizer, args, amp)
    timings["test_seconds"] = time.perf_counter() - t0
    extra = {}
    if extra_rows is not None:
        extra[args.eval_file] = evaluate_rows(model, extra_rows, tokenizer, args, amp)
    timings["total_seconds"] = time.perf_counter() - t_start

    order = ["pre-trained (random head)", "zero-shot (prompt)", CALIBRATED, finetuned]
    table = format_classification_table({k: rows_report[k] for k in order if k in rows_report})
    print("\n" + table + "\n")
    metrics = {
        "task": "sst2", "model": args.model, "policy": args.train, "preset": args.preset,
        "split": {"kind": args.split, "train": len(train_rows), "test": len(test_rows)},
        "rows": rows_report, "eval_files": extra, "timings": timings,
        "train": {"tokens_per_second": result.tokens_per_second, "steps": result.steps,
                  "padding_waste": result.padding_waste, "trainable_params": result.trainable_params,
                  "total_params": result.total_params, "trunk_cache": result.trunk_cache,
                  "epoch_seconds": result.epoch_seconds, "final_loss": result.losses[-1] if result.losses else None},
        "device": device, "amp": amp,
    }
    run_config = {"command": command_line(), **vars(args)}
    write_json(out / "run_config.json", run_config)
    loss_curve(result.losses, out / "loss.png", title=f"SST-2 {finetuned} loss")
    confusion_matrix_plot(rows_report[finetuned]["confusion_matrix"], sst2.LABELS, out / "confusion.png",
                          title=f"SST-2 test, {finetuned}")
    card = dict(datasets=["nyu-mll/glue"], policy=args.train, command=command_line(),
                eval_dataset={"type": "nyu-mll/glue", "name": "GLUE SST-2", "config": "sst2",
                              # GLUE's test split is unlabelled: the study tests on 20% held out of the rest.
                              "split": "held-out 20% of train+validation (seed 1)" if args.split == "study"
                              else "validation"},
                hyperparameters={k: getattr(args, k) for k in PRESETS["study"]} | {"amp": amp, "seed": args.seed},
                description=f"Trained and evaluated on the {args.split} split ({len(train_rows):,} train / "
                            f"{len(test_rows):,} test sentences).")
    scores = {k: v for k, v in rows_report[finetuned].items() if k in ("accuracy", "precision", "recall", "f1")}
    results_md = (f"# SST-2 ({args.model}, {args.train})\n\n{table}\n\nsplit: {len(train_rows):,} train / "
                  f"{len(test_rows):,} test; wall time {timings['total_seconds']:.0f} s; "
                  f"training {result.tokens_per_second:,.0f} tokens/s\n")
    finish_run(out, model, tokenizer, source=args.model, scores=scores, card=card, results_md=results_md,
               metrics=metrics, push_to_hub=args.push_to_hub, private=args.private)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (sst2.DataError, llama_ft.cli.run_folder.RunDirError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
