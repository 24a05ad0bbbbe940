"""Fine-tune a Llama-family model for extractive QA on SQuAD and print the study's table, scored per question.

    python train_squad.py --n 4000                       # the study's protocol, our default policy
    python train_squad.py --n 4000 --preset study --per-window-scoring   # the study's settings and scoring
    python train_squad.py --n 4000 --model smollm2-135m --data ../shared/data/squad_v1.1/train-v1.1-rebuilt.json.zip \\
        --eval-file ../shared/data/squad_v1.1/dev-v1.1-open.json.zip --eval-limit 1000

Data: the first N + 1,000 training questions, split N train / 1,000 test with seed 1 (the study's protocol);
--split file trains on the first N questions of --data (--n all: every one) and tests on --eval-file, as
transformers' run_qa does. Its spellings (--max_seq_length, --doc_stride, --learning_rate, --num_train_epochs,
--per_device_train_batch_size, --output_dir, --overwrite_output_dir, --resume_from_checkpoint) are accepted.
Under torchrun (README "Several processes, several nodes") spell --n as --train-questions: torchrun's own parser
takes --n for its --nnodes.
Rows: the model with an untrained span head (the study's "before"), the causal LM prompted zero-shot, and the
fine-tuned model. Each row predicts when its model is ready; all are scored after training (metrics.json's
timing `metrics_seconds`). The untrained row runs the model as training holds it: the policy applied (LoRA
adapters start at zero) and the frozen weights in bf16 (with --amp none: fp32). --eval-every / --save-best
evaluate on a validation slice held out of the training questions (the last tenth, at most 1,000; for SQuAD v2
the slice that calibrates the no-answer threshold): exact_match and f1 per question (the cheap metrics: no
BLEU/ROUGE/METEOR) and eval_loss over its windows. Outputs in
--output-dir: metrics.json, results.md, predictions.json (official format {id: answer}, fine-tuned, test),
predictions_zero_shot.json, predictions_eval.json, loss.png, run_config.json, train_log.jsonl and the fine-tuned
model (model/, Hugging Face layout).
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from dataclasses import replace
from functools import partial

import llama_ft
from llama_ft.cli.errors import run_guarded
from llama_ft.cli.flags import add_shared_flags, apply_preset, at_least, check_shared_flags
from llama_ft.cli.ranks import join_processes, output_folder, quiet_unless_main, together
from llama_ft.cli.run_folder import command_line, finish_run
from llama_ft.cli.training import Phases, device_and_amp, report_to, train_config, train_summary, wants_evaluation
from llama_ft.files import write_json
from llama_ft.metrics import format_squad_table
from llama_ft.plots import loss_curve
from llama_ft.tasks.squad.data import SquadDataError, check_trainable, hold_out, load_squad, study_split
from llama_ft.tasks.squad.scoring import (QuestionSet, predict_sets, prompted_replies, prompted_report, report_sets,
                                          summary_table)
from llama_ft.tasks.squad.windows import QA_FORMATS, pair_tokenizer
from llama_ft.train import prepare_for_training, train
from llama_ft.train.distributed import close_distributed

RANDOM_HEAD = "pre-trained (random head)"
EVAL_METRICS = ("f1", "exact_match", "eval_loss")
# The study's settings, and ours. The default policy, micro-batch, learning rate and epochs were chosen by
# measurement (docs/study.md).
PRESETS = {
    "study": {"policy": "head", "lr": 2e-5, "weight_decay": 0.01, "schedule": "linear", "warmup_ratio": 0.0,
              "batch_size": 64, "global_batch": 64, "epochs": 3, "max_length": 128, "stride": 64},
    "default": {"policy": "lora:16", "lr": 3e-3, "weight_decay": 0.01, "schedule": "cosine", "warmup_ratio": 0.05,
                "batch_size": 16, "global_batch": 32, "micro_batch_tokens": 1536, "compiled_micro_batch_tokens": 2560,
                "epochs": 1, "max_length": 384, "stride": 128},
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_shared_flags(ap, presets=PRESETS, output_dir="runs/squad", eval_metrics=EVAL_METRICS, unit="windows",
                     eval_help="exact_match, f1 and eval_loss on a tenth of the training questions held out")
    # --train-questions: under torchrun, whose own parser takes --n for an abbreviation of its --nnodes.
    ap.add_argument("--n", "--train-questions", dest="n", type=questions, default=4000,
                    help="training questions (the study: 4000 and 24000); `all` with --split file: every one")
    ap.add_argument("--split", choices=("study", "file"), default="study",
                    help="study: the first N + --test-size questions, --test-size of them drawn for test (seed 1); "
                         "file: train on the first N questions of --data, test on --eval-file (no hold-out)")
    ap.add_argument("--data", help="official SQuAD JSON (zipped or not) or a Hub dataset id; "
                                   "default: the Hub (rajpurkar/squad, or rajpurkar/squad_v2 with --version 2.0)")
    ap.add_argument("--version", choices=("1.1", "2.0"), default="1.1", help="SQuAD version when --data is the Hub")
    ap.add_argument("--test-size", type=int, default=1000, help="test questions drawn from the first N + this many")
    ap.add_argument("--eval-file", help="also evaluate on this official-format SQuAD file after training (the "
                                        "test set under --split file)")
    ap.add_argument("--eval-limit", type=int, help="only the first K questions of --eval-file")
    ap.add_argument("--prompt-limit", type=int,
                    help="score the prompted zero-shot row on the first K test questions only (generation is the "
                         "slowest step on a CPU); default: all")
    ap.add_argument("--max-length", "--max_seq_length", type=int, help="tokens per window (default 384)")
    ap.add_argument("--stride", "--doc_stride", type=int,
                    help="tokens shared by consecutive windows of a context (default 128)")
    ap.add_argument("--study-windows", action="store_true", help="the study's windows: --max-length 128 --stride 64")
    ap.add_argument("--per-window-scoring", action="store_true",
                    help="also score as the study did: every window alone, two independent argmaxes, text "
                         "re-decoded from ids (only to reproduce its numbers)")
    ap.add_argument("--n-best", type=int, default=20, help="span candidates kept per window")
    ap.add_argument("--max-answer-tokens", type=int, default=30, help="longest answer span, in tokens")
    ap.add_argument("--qa-format", choices=QA_FORMATS, default="template",
                    help="template: llama_ft's 'Question: ...\\nContext:\\n...\\nAnswer:' windows; pair: the "
                         "tokenizer's question/context pair ([BOS] question EOS context EOS), which transformers' "
                         "question-answering pipeline builds from the export, decoded as that pipeline decodes")
    args = ap.parse_args(argv)
    if args.study_windows:
        if args.max_length is not None or args.stride is not None:
            ap.error("--study-windows sets --max-length 128 --stride 64; give one or the other")
        args.max_length, args.stride = 128, 64
    apply_preset(args, PRESETS)
    check_shared_flags(ap, args)
    at_least(ap, args, 1, "--n", "--test-size", "--eval-limit", "--prompt-limit", "--n-best", "--max-answer-tokens")
    at_least(ap, args, 0, "--stride")
    if args.split == "file" and not args.eval_file:
        ap.error("--split file tests on --eval-file; give the file (SQuAD's dev-v1.1.json)")
    if args.n is None and args.split != "file":
        ap.error("--n all trains on every question, which leaves none for the study split's test; "
                 "use --split file --eval-file FILE")
    if args.stride >= args.max_length:
        ap.error(f"--stride {args.stride} must be less than --max-length {args.max_length} (it is the overlap "
                 "of two windows)")
    return args


def questions(value: str) -> int | None:
    """--n: a count of questions, or `all` (None)."""
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a number of questions nor `all`") from None


def load_splits(args, extra):
    """(data, train, held out, test): the study split, or under --split file the first --n questions against
    --eval-file (`extra`); held out of train: the v2 threshold's calibration questions, and the validation
    slice of --eval-every / --save-best. `data` keeps what loading found (version, source, counts), not its
    questions: all of SQuAD's would stay resident through training (55 MB; BENCHMARKS.md, session 24)."""
    data = load_squad(args.data, "train", args.version)
    print(f"SQuAD {data.version} from {data.source}: {data.counts.summary()}")
    if args.split == "file":
        if args.n is not None and args.n > len(data.examples):
            raise SquadDataError(f"{data.source} has {len(data.examples):,} questions, fewer than --n {args.n:,}; "
                                 "lower --n or pass --n all.")
        train_q, test_q = data.examples[:args.n], extra.examples[:args.eval_limit]
    else:
        train_q, test_q = study_split(data.examples, args.n, args.test_size, seed=1, where=data.source)
    held = []
    if data.version == "2.0" or wants_evaluation(args):
        train_q, held = hold_out(train_q)
    check_trainable(train_q, data.source)
    n_trainable = sum(ex.trainable for ex in train_q)
    head = (f"study split: first {args.n + args.test_size:,} questions ->" if args.split == "study"
            else f"file split: {data.source} -> first")
    print(f"{head} {len(train_q):,} train / {len(test_q):,} test"
          + (f" / {len(held):,} held out for the no-answer threshold" if held and data.version == "2.0" else "")
          + (f" / {len(held):,} held out for validation" if held and data.version != "2.0" else "")
          + f"; {len(train_q) - n_trainable} train questions have no usable answer span (skipped)")
    return replace(data, examples=[]), train_q, held, test_q


def run(args) -> int:
    """The whole run; under torchrun every process trains and scores its shard, rank 0 alone prints and writes."""
    t_start = time.perf_counter()
    device, amp = device_and_amp(args.device, args.amp, study=args.preset == "study")
    rank, world, device = join_processes(device)
    with quiet_unless_main(rank), ExitStack() as stack:
        with together(rank, world, args):  # a bad folder or file on any process stops all of them here
            out = output_folder(stack, rank, args)
            extra = load_squad(args.eval_file) if args.eval_file else None  # a bad file fails now, not after training
            data, train_q, held_q, test_q = load_splits(args, extra)
            tokenizer = llama_ft.load_tokenizer(args.model)
            windows = partial(QuestionSet, tokenizer=tokenizer, max_length=args.max_length, stride=args.stride,
                              amp=amp, compile=args.compile, n_best=args.n_best,
                              max_answer_tokens=args.max_answer_tokens, qa_format=args.qa_format)
            train_set = windows("train", train_q)
            examples = train_set.training_examples()
            print(f"train windows ({args.max_length}/{args.stride}): {train_set.counts.summary()}")
            if not examples:
                raise SquadDataError(f"{data.source}: no training window has an answer on token boundaries; "
                                     "use more questions (--n) or another file.")
            sets = {"test": windows("test", test_q)}
            print(f"test windows: {sets['test'].counts.summary()}")
            if extra is not None and args.split == "file":
                print(f"test file {extra.source}: {extra.counts.summary()}")
            elif extra is not None:
                print(f"eval file {extra.source}: {extra.counts.summary()}")
                sets["eval"] = windows("eval", extra.examples[:args.eval_limit])
                print(f"eval: {len(sets['eval'].examples):,} questions; windows: {sets['eval'].counts.summary()}")
            held = windows("held-out", held_q) if held_q else None
        calib = held if data.version == "2.0" else None
        rows: dict[str, dict[str, dict]] = {}
        outputs: dict[str, dict] = {}
        phase = Phases(t_start)

        # Each row predicts as the run goes and is scored at the end (phase "metrics"): METEOR's WordNet tables
        # and nltk then load once, after training, and stay out of its peak.
        before = raw = None
        if not args.no_zero_shot:
            with phase("zero_shot_prompt"):
                prompt_q = test_q[:args.prompt_limit]
                lm = llama_ft.from_pretrained(args.model, task="causal-lm", dtype="fp32" if amp == "none" else "bf16",
                                              device=device)
                raw = prompted_replies(lm, tokenizer, prompt_q, amp)
                del lm

        model = llama_ft.from_pretrained(args.model, task="qa", device=device, seed=args.seed)
        cfg = train_config(args, out, device, amp)
        if not args.no_zero_shot:
            # The random-head row runs the model as training will hold it (policy applied, frozen weights bf16):
            # the weights and compiled graph of the fine-tuned pass.
            prepare_for_training(model, cfg)
            with phase("random_head"):
                before = predict_sets(model, sets, calib, args.per_window_scoring)

        with phase("train"):
            evaluate = wants_evaluation(args)
            result = train(model, examples, cfg,
                           eval_set=held.training_examples() if evaluate else None,
                           eval_fn=held.em_f1 if evaluate else None)
        with phase("eval"):
            finetuned = f"fine-tuned ({args.policy})"
            after = predict_sets(model, sets, calib, args.per_window_scoring)
        with phase("metrics"):
            if raw is not None:
                name = "zero-shot (prompt)" + (f", first {len(prompt_q)}" if len(prompt_q) < len(test_q) else "")
                report, texts = prompted_report(prompt_q, raw)
                rows[name], outputs["zero_shot"] = {"test": report}, {"answers": texts, "replies": raw}
            if before is not None:
                rows[RANDOM_HEAD], outputs[RANDOM_HEAD] = report_sets(sets, before)
            rows[finetuned], outputs[finetuned] = report_sets(sets, after)
        timings = phase.finish()

        with together(rank, world, args):  # the other ranks wait for rank 0's files, and stop if it fails
            if rank == 0:
                prompted = next((k for k in rows if k.startswith("zero-shot")), None)
                rows = {k: rows[k] for k in (RANDOM_HEAD, prompted, finetuned) if k in rows}
                table = results_markdown(args, data, train_set, sets, rows, finetuned, prompted, device, timings,
                                         result)
                print("\n" + table)
                metrics = {
                    "task": "squad", "version": data.version, "model": args.model, "policy": args.policy,
                    "preset": args.preset, "device": device, "amp": amp, "processes": world,
                    "split": {"kind": args.split, "n": args.n, "train": len(train_q), "test": len(test_q),
                              "calibration": len(held_q) if calib else 0,
                              "validation": len(held_q) if evaluate else 0, "eval_file": args.eval_file,
                              "eval": len(sets["eval"].examples) if "eval" in sets else 0},
                    "data": data.counts.as_dict(),
                    "windows": {"max_length": args.max_length, "stride": args.stride, "qa_format": args.qa_format,
                                "train": train_set.counts.as_dict(),
                                **{k: s.counts.as_dict() for k, s in sets.items()}},
                    "rows": rows, "timings": timings, "peak_memory_bytes": phase.peaks,
                    "train": {**train_summary(result), "examples": len(examples)},
                }
                write_outputs(out, args, data, model, tokenizer, rows[finetuned], outputs, finetuned, table, metrics,
                              result, amp, (len(train_q), len(test_q)))
                report_to(args, out, result)
    close_distributed()
    return 0


def results_markdown(args, data, train_set, sets, rows, finetuned, prompted, device, timings, result) -> str:
    """results.md: the split, the summary table, then before/after tables per question set."""
    before = rows.get(RANDOM_HEAD)
    split = (f"split: {len(train_set.examples):,} train / {len(sets['test'].examples):,} test questions "
             f"({train_set.counts.windows:,} / {sets['test'].counts.windows:,} windows of {args.max_length} tokens, "
             f"stride {args.stride}); wall time {timings['total_seconds']:.0f} s; training "
             f"{result.tokens_per_second:,.0f} tokens/s on {device}")
    parts = [f"# SQuAD {data.version}: {args.model}, {finetuned}, --n {args.n or 'all'}", "", split, "",
             "Exact match and F1 (0-100), scored per question:", "", summary_table(rows)]
    for key, s in sets.items():
        label = ("test" if key == "test" and args.split == "study"
                 else f"{args.eval_file} ({len(s.examples):,} questions)")
        parts += ["", f"## {label}: before / after (per question)", "",
                  format_squad_table(before[key] if before else None, rows[finetuned][key])]
        if args.per_window_scoring and key == "test":
            parts += ["", f"## {label}, the study's per-window scoring ({s.counts.windows:,} windows)", "",
                      format_squad_table(before[key]["per_window"] if before else None,
                                         rows[finetuned][key]["per_window"])]
    if prompted:
        parts += ["", f"## {prompted}", "", format_squad_table(None, rows[prompted]["test"])]
    return "\n".join(parts) + "\n"


def write_outputs(out, args, data, model, tokenizer, report, outputs, finetuned, table, metrics, result, amp,
                  sizes) -> None:
    """run_config.json, loss.png, the predictions, the model with its card, results.md and metrics.json (last)."""
    write_json(out / "run_config.json", {"command": command_line(), **vars(args)})
    loss_curve(result.losses, out / "loss.png", title=f"SQuAD {finetuned} loss")
    write_json(out / "predictions.json", outputs[finetuned]["test"])
    if "eval" in outputs[finetuned]:
        write_json(out / "predictions_eval.json", outputs[finetuned]["eval"])
    if "zero_shot" in outputs:
        write_json(out / "predictions_zero_shot.json", outputs["zero_shot"])
    card = {"datasets": [f"rajpurkar/squad{'_v2' if data.version == '2.0' else ''}"], "policy": args.policy,
            "command": command_line(),
            "description": (f"Extractive QA head trained on {sizes[0]:,} SQuAD {data.version} questions ("
                            + ("the study's split, seed 1" if args.split == "study" else f"the first of {data.source}")
                            + f"), windows of {args.max_length} tokens with stride {args.stride}; evaluated per "
                            f"question on {sizes[1]:,} "
                            + ("held-out questions." if args.split == "study" else f"questions of {args.eval_file}.")),
            "hyperparameters": {k: getattr(args, k) for k in PRESETS["study"]} | {"amp": amp, "seed": args.seed}}
    scores = {k: report["test"][k] for k in ("exact_match", "f1")}
    # The export carries its input format: config.json's qa_format, and for `pair` the tokenizer that builds it.
    model.config.extra["qa_format"] = args.qa_format
    if args.qa_format == "pair":
        tokenizer = pair_tokenizer(tokenizer)
    finish_run(out, model, tokenizer, source=args.model, scores=scores, card=card, results_md=table, metrics=metrics,
               repo_id=args.push_to_hub, private=args.private)


def main(argv=None) -> int:
    """Parse, then run; an expected failure prints one line and returns its exit status."""
    args = parse_args(argv)
    return run_guarded(lambda: run(args), debug=args.debug, output_dir=args.output_dir, resume=args.resume)


if __name__ == "__main__":
    sys.exit(main())
