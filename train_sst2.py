"""Fine-tune a Llama-family model on GLUE SST-2 and print the study's table.

    python train_sst2.py --preset study                  # the study: Llama-3.2-1B, head only, its hyper-parameters
    python train_sst2.py --model smollm2-135m --data ../shared/data/sst2 --max-train 16000 --max-test 2000

Rows: the untrained model with a random head (the study's "pre-trained"), the causal LM prompted zero-shot
(as it answers, and batch-calibrated: its label bias removed without labels), and the fine-tuned model.
--eval-every / --save-best evaluate on a validation slice held out of the training rows (a stratified tenth,
at most 1,000): accuracy, f1 and eval_loss. Outputs in --output-dir: metrics.json, results.md, confusion.png,
loss.png, run_config.json, train_log.jsonl and the fine-tuned model (model/, Hugging Face layout).

Your own data: any of --text-column / --text-pair-column / --label-column, a .csv file, or a Hub dataset id
(with --dataset-config) reads --data as your own classification data, any number of labels:

    python train_sst2.py --data reviews.csv --text-column review --label-column stars --predict-file new.csv
    python train_sst2.py --data nyu-mll/glue --dataset-config mrpc --text-column sentence1 \
        --text-pair-column sentence2 --validation-file dev.tsv

Labels become classes in numeric order when they are integers, in sorted order when they are names; the
exported model's config.json carries them as id2label / label2id. A text pair is encoded with the tokenizer's
pair template when it has one that marks the pair (Llama 3: BOS A BOS B), else as A, EOS, B (SmolLM2).
--predict-file writes predictions.tsv (index, prediction, probability: GLUE's submission format plus the
probability) for a file with or without labels, such as GLUE's test.tsv. The run_glue spellings
(--max_seq_length, --learning_rate, --num_train_epochs, --per_device_train_batch_size, --output_dir,
--overwrite_output_dir, --resume_from_checkpoint) are accepted too.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import llama_ft
from llama_ft.cli.errors import run_guarded
from llama_ft.cli.flags import add_shared_flags, apply_preset, at_least, check_shared_flags
from llama_ft.cli.ranks import join_processes, output_folder, quiet_unless_main, together
from llama_ft.cli.run_folder import command_line, finish_run
from llama_ft.cli.training import Phases, device_and_amp, report_to, train_config, train_summary, wants_evaluation
from llama_ft.files import write_json
from llama_ft.metrics import format_classification_table
from llama_ft.plots import confusion_matrix_plot, loss_curve
from llama_ft.tasks.sst2 import data as sst2
from llama_ft.tasks.sst2.scoring import CALIBRATED, PROMPTED, prompted_rows
from llama_ft.tasks.text import data as text
from llama_ft.tasks.text.scoring import probabilities, score_rows, score_versions, write_predictions
from llama_ft.train import apply_training_policy, prepare_for_training, train
from llama_ft.train.checkpoint import trainable_state
from llama_ft.train.versions import shares_bottom
from llama_ft.train.distributed import close_distributed

RANDOM_HEAD = "pre-trained (random head)"
SST2_LABELS = text.LabelSet((0, 1), tuple(sst2.LABELS))
EVAL_METRICS = ("accuracy", "f1", "eval_loss")
# The study's hyper-parameters, and ours (chosen by measurement: see README "Results").
PRESETS = {
    "study": dict(policy="head", lr=2e-4, weight_decay=0.01, schedule="linear", warmup_ratio=0.0,
                  batch_size=16, epochs=3, max_length=128),
    # last:4 trains the top 4 blocks on a cached trunk; the policy, learning rate, batch and epochs were chosen on
    # SmolLM2-135M: the most accurate setting measured within the quickstart's and the whole split's time
    # targets (docs/study.md, "Choosing the default").
    "default": dict(policy="last:4", lr=5.7e-4, weight_decay=0.01, schedule="cosine", warmup_ratio=0.05,
                    batch_size=64, epochs=3, max_length=128),
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_shared_flags(ap, presets=PRESETS, output_dir="runs/sst2", eval_metrics=EVAL_METRICS, unit="sentences",
                     eval_help="accuracy, f1 and eval_loss on a tenth of the training rows held out")
    ap.add_argument("--data", default=None,
                    help="GLUE SST-2 folder or labelled file (.tsv, .jsonl, .parquet; .csv for your own data) or a "
                         "Hub dataset id; default: the Hub (nyu-mll/glue, sst2)")
    ap.add_argument("--dataset-config", help="with a Hub dataset id as --data: its configuration (glue: sst2, mrpc)")
    ap.add_argument("--text-column", help="column of the text (default: sentence); giving any column flag reads "
                                          "--data as your own data, labels as they come")
    ap.add_argument("--text-pair-column", help="column of the second text of a pair (default: none)")
    ap.add_argument("--label-column", help="column of the label (default: label); integer labels are classes in "
                                           "numeric order, names in sorted order")
    ap.add_argument("--split", choices=("study", "glue"), default="study",
                    help="study: all labelled rows 80:20 stratified, seed 1; glue: train vs the validation file")
    ap.add_argument("--validation-file", help="test on this labelled file instead of the split's test side "
                                              "(training then uses every row of --data)")
    ap.add_argument("--eval-file", help="also evaluate on this labelled file after training")
    ap.add_argument("--predict-file", help="write predictions.tsv (index, prediction, probability) for this "
                                           "file's rows, labelled or not (GLUE's test.tsv)")
    ap.add_argument("--max-train", type=int, help="stratified subset of the training rows (after the split)")
    ap.add_argument("--max-test", type=int, help="stratified subset of the test rows (after the split)")
    ap.add_argument("--max-length", "--max_seq_length", type=int, help="tokens per sentence (longer ones are cut)")
    args = apply_preset(ap.parse_args(argv), PRESETS)
    check_shared_flags(ap, args)
    at_least(ap, args, 2, "--max-train", "--max-test")  # a stratified subset holds both labels
    if args.validation_file and args.split != "study":
        ap.error("--validation-file replaces the test side of --split; give one or the other")
    if args.dataset_config and (args.data is None or Path(args.data).exists()):
        ap.error("--dataset-config names the configuration of a Hub dataset id given as --data")
    return args


def own_data(args) -> bool:
    """True when --data is read as the user's own data (any labels) rather than as SST-2 (0 / 1): a column flag
    or --dataset-config is given, or --data is a .csv file, a folder with train.csv, or a Hub dataset id."""
    if any(v is not None for v in (args.text_column, args.text_pair_column, args.label_column, args.dataset_config)):
        return True
    if args.data is None:
        return False
    p = Path(args.data)
    if not p.exists():
        return p.suffix.lower() not in text.READERS  # a missing file is reported as one, not fetched from the Hub
    return p.suffix.lower() == ".csv" or (p / "train.csv").is_file()


def columns(args) -> text.Columns:
    return text.Columns(args.text_column or "sentence", args.text_pair_column, args.label_column or "label")


def load_data(args) -> tuple[dict[str, list], text.LabelSet]:
    """({split: labelled TextExamples}, the classes) of --data: SST-2 as GLUE writes it, or your own data."""
    if not own_data(args):
        data = sst2.load_sst2(args.data)
        return {k: [text.TextExample(r.sentence, r.label, index=str(i)) for i, r in enumerate(rows)]
                for k, rows in data.items()}, SST2_LABELS
    where = f"--data {args.data}"
    raw, names = text.load_text(args.data, columns(args), args.dataset_config)
    raw = {k: v for k, v in raw.items() if k in ("train", "validation") and v[0].label is not None}
    if "train" not in raw:
        raise text.TextDataError(f"{where}: no labelled train split to train on.")
    pool = raw["train"] + (raw.get("validation", []) if args.split == "study" and not args.validation_file else [])
    labels = text.label_set(pool, where, names)
    return {k: text.to_examples(v, labels, f"{where} ({k})") for k, v in raw.items()}, labels


def load_splits(args, data: dict[str, list], labels: text.LabelSet) -> tuple[list, list]:
    """(train rows, test rows) of --data under --split (or tested on --validation-file), subsampled by
    --max-train / --max-test."""
    name = "" if own_data(args) else "SST-2 "
    if args.validation_file:
        train_rows, test_rows = data["train"], None
    elif args.split == "study":
        pool = data["train"] + data.get("validation", [])
        train_rows, test_rows = sst2.stratified_split(pool, 0.2, seed=1, where=f"--data {args.data}")
        print(f"{name}study split: {len(pool):,} labelled rows -> {len(train_rows):,} train / {len(test_rows):,} test")
    else:
        if "validation" not in data:
            raise sst2.DataError(f"{args.data}: --split glue needs a validation file (dev.tsv) next to train.tsv; "
                                 "use --split study otherwise.")
        train_rows, test_rows = data["train"], data["validation"]
        print(f"{name}GLUE split: {len(train_rows):,} train / {len(test_rows):,} validation")
    train_rows = sst2.subsample(train_rows, args.max_train, seed=args.seed, where=f"--data {args.data} --max-train")
    if test_rows is not None:
        test_rows = sst2.subsample(test_rows, args.max_test, seed=args.seed, where=f"--data {args.data} --max-test")
    if args.max_train or args.max_test:
        print(f"subset: {len(train_rows):,} train / {len(test_rows or []):,} test (stratified, seed {args.seed})")
    sst2.check_classes(train_rows, f"--data {args.data}", labels.names)
    return train_rows, test_rows


def side_files(args, labels: text.LabelSet) -> dict[str, list]:
    """The rows of --validation-file, --eval-file (labelled, in the training classes) and --predict-file
    (labels not needed), read before anything runs so that a bad file fails first."""
    out = {}
    for flag, path, labelled in (("validation", args.validation_file, True), ("eval", args.eval_file, True),
                                 ("predict", args.predict_file, False)):
        if path:
            rows = text.read_rows(path, columns(args), labelled)
            out[flag] = text.to_examples(rows, labels if labelled else None, path)
    return out


def run(args) -> int:
    """The whole run; under torchrun every process trains and scores its shard, rank 0 alone prints and writes."""
    t_start = time.perf_counter()
    device, amp = device_and_amp(args.device, args.amp, study=args.preset == "study")
    rank, world, device = join_processes(device)
    with quiet_unless_main(rank), ExitStack() as stack:
        with together(rank, world, args):  # a bad folder or file on any process stops all of them here
            out = output_folder(stack, rank, args)
            data, labels = load_data(args)
            train_rows, test_rows = load_splits(args, data, labels)
            files = side_files(args, labels)  # a bad file fails now, not after training
            if test_rows is None:
                test_rows = sst2.subsample(files["validation"], args.max_test, seed=args.seed,
                                           where=f"--validation-file {args.validation_file} --max-test")
                print(f"--validation-file: {len(train_rows):,} train / {len(test_rows):,} test")
            held_rows = None
            if wants_evaluation(args):
                train_rows, held_rows = sst2.hold_out(train_rows, seed=args.seed,
                                                      where=f"--data {args.data} validation")
                print(f"validation: {len(held_rows):,} rows held out of training")
            tokenizer = llama_ft.load_tokenizer(args.model)
        rows: dict[str, dict] = {}
        phase = Phases(t_start)

        # The zero-shot prompt asks for SST-2's sentiment words: it has no meaning for other labels.
        prompted = not args.no_zero_shot and labels == SST2_LABELS and args.text_pair_column is None
        if prompted:
            with phase("zero_shot_prompt"):
                lm = llama_ft.from_pretrained(args.model, task="causal-lm", dtype="fp32" if amp == "none" else "bf16",
                                              device=device)
                rows.update(prompted_rows(lm, tokenizer, [sst2.Example(r.text, r.label) for r in test_rows], amp))
                del lm

        model = llama_ft.from_pretrained(args.model, task="classification", num_labels=len(labels.values),
                                         device=device, seed=args.seed)
        # config.json's id2label / label2id come from the model config (llama_ft.hf.export.labels_of).
        model.config.extra.update(id2label={str(i): n for i, n in labels.id2label.items()},
                                  label2id={n: i for i, n in labels.id2label.items()})
        cfg = train_config(args, out, device, amp)
        apply_training_policy(model, cfg)
        # Where the policy freezes a bottom (last:4), the random head is scored after training, from the same
        # pass through the bottom as the fine-tuned model, with the trainable weights as they start.
        initial = trainable_state(model) if not args.no_zero_shot and shares_bottom(model) else None
        after = initial is not None
        if not args.no_zero_shot and not after:
            # The random-head row runs the model as training will hold it (frozen weights bf16 under autocast):
            # the weights and compiled graph of the fine-tuned pass, as in train_squad.py.
            prepare_for_training(model, cfg)
            with phase("random_head"):
                rows[RANDOM_HEAD] = score_rows(model, test_rows, tokenizer, args.max_length, amp, args.compile)

        with phase("train"):
            eval_set = text.encode(held_rows, tokenizer, args.max_length) if held_rows else None
            eval_fn = (lambda m: {k: score_rows(m, held_rows, tokenizer, args.max_length, amp, args.compile)[k]
                                  for k in ("accuracy", "f1")}) if held_rows else None
            result = train(model, text.encode(train_rows, tokenizer, args.max_length), cfg, eval_set=eval_set,
                           eval_fn=eval_fn)
        finetuned = f"fine-tuned ({args.policy})"
        with phase("test"):
            if after:
                (rows[finetuned], rows[RANDOM_HEAD]), scores = score_versions(
                    model, test_rows, [None, initial], tokenizer, args.max_length, amp, args.compile)
                del initial
            else:
                rows[finetuned] = score_rows(model, test_rows, tokenizer, args.max_length, amp, args.compile)
        if after:
            phase.carve("random_head", scores.seconds[1], out_of="test")
        extra = ({args.eval_file: score_rows(model, files["eval"], tokenizer, args.max_length, amp, args.compile)}
                 if "eval" in files else {})
        probs = (probabilities(model, files["predict"], tokenizer, args.max_length, amp, args.compile)
                 if "predict" in files else None)
        timings = phase.finish()

        with together(rank, world, args):  # the other ranks wait for rank 0's files, and stop if it fails
            if rank == 0:
                if probs is not None:
                    write_predictions(out / "predictions.tsv", files["predict"], probs, labels)
                    print(f"predictions: {len(files['predict']):,} rows of {args.predict_file} -> "
                          f"{out / 'predictions.tsv'}")
                table = format_classification_table({k: rows[k] for k in (RANDOM_HEAD, PROMPTED, CALIBRATED,
                                                                            finetuned) if k in rows})
                print("\n" + table + "\n")
                split = "validation-file" if args.validation_file else args.split
                metrics = {"task": "text-classification" if own_data(args) else "sst2", "model": args.model,
                           "policy": args.policy, "preset": args.preset,
                           "split": {"kind": split, "train": len(train_rows), "test": len(test_rows)},
                           "rows": rows, "eval_files": extra, "timings": timings, "peak_memory_bytes": phase.peaks,
                           "train": train_summary(result),
                           "device": device, "amp": amp, "processes": world}
                if own_data(args):
                    metrics["labels"] = list(labels.names)
                if held_rows:
                    metrics["split"]["validation"] = len(held_rows)
                write_outputs(out, args, model, tokenizer, rows[finetuned], finetuned, table, metrics, result, amp,
                              (len(train_rows), len(test_rows)), labels)
                report_to(args, out, result)
    close_distributed()
    return 0


def write_outputs(out, args, model, tokenizer, report, finetuned, table, metrics, result, amp, sizes,
                  labels: text.LabelSet) -> None:
    """run_config.json, the plots, the model with its card, results.md and metrics.json (last)."""
    write_json(out / "run_config.json", {"command": command_line(), **vars(args)})
    name = "your data" if own_data(args) else "SST-2"
    loss_curve(result.losses, out / "loss.png", title=f"{name} {finetuned} loss")
    confusion_matrix_plot(report["confusion_matrix"], [labels.names[i] for i in report["labels"]],
                          out / "confusion.png", title=f"{name} test, {finetuned}")
    split = ("the given validation file" if args.validation_file
             else "held-out 20% of train+validation (seed 1)" if args.split == "study" else "validation")
    if own_data(args):
        hub = args.data if not Path(args.data).exists() else None
        card = dict(datasets=[hub] if hub else [],
                    eval_dataset={"type": hub, "name": hub, "config": args.dataset_config, "split": split}
                    if hub else {})
    else:
        # GLUE's test split is unlabelled: the study tests on 20% held out of the rest.
        card = dict(datasets=["nyu-mll/glue"],
                    eval_dataset={"type": "nyu-mll/glue", "name": "GLUE SST-2", "config": "sst2", "split": split})
    card.update(policy=args.policy, command=command_line(),
                hyperparameters={k: getattr(args, k) for k in PRESETS["study"]} | {"amp": amp, "seed": args.seed},
                description=f"Trained and evaluated on the {metrics['split']['kind']} split ({sizes[0]:,} train / "
                            f"{sizes[1]:,} test {'rows' if own_data(args) else 'sentences'}).")
    scores = {k: v for k, v in report.items() if k in ("accuracy", "precision", "recall", "f1")}
    results_md = (f"# {name} ({args.model}, {args.policy})\n\n{table}\n\nsplit: {sizes[0]:,} train / "
                  f"{sizes[1]:,} test; wall time {metrics['timings']['total_seconds']:.0f} s; "
                  f"training {result.tokens_per_second:,.0f} tokens/s\n")
    finish_run(out, model, tokenizer, source=args.model, scores=scores, card=card, results_md=results_md,
               metrics=metrics, repo_id=args.push_to_hub, private=args.private)


def main(argv=None) -> int:
    """Parse, then run; an expected failure prints one line and returns its exit status."""
    args = parse_args(argv)
    return run_guarded(lambda: run(args), debug=args.debug, output_dir=args.output_dir, resume=args.resume)


if __name__ == "__main__":
    sys.exit(main())
