"""The flags both recipes share (model, training, evaluation, run folder, Hub), their preset merge, and the
checks that refuse a bad value at parse time, naming the flag and the allowed range. transformers' example
scripts' spellings (--learning_rate, --output_dir, ...) are aliases, so their command lines carry over."""
from __future__ import annotations

import argparse
import os

from llama_ft.cli.errors import as_flags
from llama_ft.cli.training import TENSORBOARD_MISSING, tensorboard_available
from llama_ft.hf.hub import HubError, check_repo_id, resolve_token
from llama_ft.model.policies import POLICY_HELP, parse_policy

# The hyper-parameters a preset sets (a flag given on the command line wins over its preset).
PRESET_KEYS = ("policy", "lr", "weight_decay", "schedule", "warmup_ratio", "batch_size", "global_batch",
               "micro_batch_tokens", "compiled_micro_batch_tokens", "epochs", "max_length")


def add_shared_flags(ap: argparse.ArgumentParser, *, presets: dict[str, dict], output_dir: str,
                     eval_metrics: tuple[str, ...], eval_help: str, unit: str) -> None:
    """Add the flags every recipe takes; `unit` names what a batch counts (sentences, windows)."""
    ap.add_argument("--model", default="meta-llama/Llama-3.2-1B",
                    help="folder, .gguf, Hub id or embedded name (smollm2-135m); default: the study's model")
    ap.add_argument("--preset", choices=tuple(presets), default="default",
                    help="hyper-parameters: " + "; ".join(f"{k}: {_preset_text(v)}" for k, v in presets.items()))
    hp = ap.add_argument_group("training (default: the preset's value)")
    hp.add_argument("--policy", "--train", dest="policy", help=f"freezing policy: {POLICY_HELP}")
    hp.add_argument("--lr", "--learning_rate", type=float, help="peak learning rate (> 0)")
    hp.add_argument("--weight-decay", type=float, help="AdamW decay of the weight matrices (>= 0)")
    hp.add_argument("--schedule", choices=("linear", "cosine"))
    hp.add_argument("--warmup-ratio", type=float, help="fraction of the steps spent warming up, in [0, 1)")
    hp.add_argument("--batch-size", "--per_device_train_batch_size", type=int, help=f"{unit} per forward pass")
    hp.add_argument("--global-batch", type=int,
                    help=f"{unit} per optimizer step, a multiple of --batch-size (gradient accumulation)")
    hp.add_argument("--micro-batch-tokens", type=int, metavar="N",
                    help="cap a forward pass at N padded tokens: a batch of long examples is split further (same "
                         "gradient, activation memory bounded by N)")
    hp.add_argument("--compiled-micro-batch-tokens", type=int, metavar="N",
                    help="the cap once the decoder blocks are compiled (they keep fewer activations per token); "
                         "default: --micro-batch-tokens")
    hp.add_argument("--epochs", "--num_train_epochs", type=whole_number, help="passes over the training data")
    hp.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (the schedule's length)")
    hp.add_argument("--max-grad-norm", type=float, default=1.0, help="clip the gradient norm (0: no clipping)")
    hp.add_argument("--grad-checkpointing", action="store_true",
                    help="recompute each trainable block in backward (less memory, more time)")
    hp.add_argument("--compile", action=argparse.BooleanOptionalAction, default="auto",
                    help="torch.compile the decoder blocks, for training and for each long inference pass (scoring, "
                         "the trunk cache); default: when its first steps or batches show it is long enough to "
                         "repay the warm-up (TrainConfig.compile='auto', predict(compile='auto'))")
    hp.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default="auto",
                    help="on a GPU, replay the compiled blocks' kernels as CUDA graphs instead of launching them one "
                         "by one; default: on a CUDA device, without --grad-checkpointing, in one process "
                         "(TrainConfig.cuda_graphs='auto')")
    hp.add_argument("--log-every", type=int, default=10, help="steps between progress-bar updates")
    ev = ap.add_argument_group("evaluation during training")
    ev.add_argument("--eval-every", type=int, metavar="N", help=f"evaluate every N optimizer steps: {eval_help}")
    ev.add_argument("--save-best", choices=eval_metrics, metavar="METRIC",
                    help=f"keep the weights with the best METRIC ({', '.join(eval_metrics)}; lower is better for "
                         "eval_loss) and finish with them; evaluates at the end when --eval-every is not given")
    run = ap.add_argument_group("run")
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    run.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                     help="autocast dtype; auto = fp16 on CUDA under --preset study (as the study), else bf16 "
                          "where the device computes it (a GPU with bf16, fp16 on one without; a CPU with "
                          "avx512_bf16 or amx_bf16), none (fp32) on any other CPU, where bf16 is several times "
                          "slower")
    run.add_argument("--shard", choices=("none", "fsdp"), default="none",
                     help="under torchrun: none = a full model per process (DDP); fsdp = weights, gradients and "
                          "optimizer state sharded over the processes (FSDP2)")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot rows")
    run.add_argument("--output-dir", "--output_dir", default=output_dir)
    run.add_argument("--overwrite", "--overwrite_output_dir", action="store_true",
                     help="replace a previous run in --output-dir (kept until the new run has finished)")
    run.add_argument("--resume", "--resume_from_checkpoint", action="store_true",
                     help="continue the run in --output-dir from its checkpoint")
    run.add_argument("--report-to", "--report_to", choices=("none", "tensorboard"), default="none",
                     help="tensorboard: write the run's scalars (loss, lr, tokens/s, evaluations) to "
                          "--output-dir/tensorboard (needs `pip install tensorboard`)")
    run.add_argument("--push-to-hub", metavar="OWNER/NAME", help="upload the fine-tuned model to the Hub")
    run.add_argument("--private", action="store_true", help="with --push-to-hub: a private repo")
    run.add_argument("--debug", action="store_true", help="show the traceback of an error")


def whole_number(value: str) -> int:
    """An int from `3` or `3.0` (run_glue writes epochs as floats); a fraction is refused."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number.is_integer():
        raise argparse.ArgumentTypeError(f"{value}: only whole epochs are supported; use --max-steps to stop "
                                         "part-way through an epoch")
    return int(number)


def _preset_text(preset: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in preset.items() if k in PRESET_KEYS and v is not None)


def apply_preset(args: argparse.Namespace, presets: dict[str, dict]) -> argparse.Namespace:
    """Fill every hyper-parameter the command line left unset from the chosen preset. A preset's micro-batch
    (`batch_size`) is a choice of speed and memory, not of the recipe: under torchrun (WORLD_SIZE processes) it
    shrinks, when it must, to the largest that splits the preset's or the given --global-batch evenly over the
    processes (SQuAD's 16 becomes 8 on 4 processes: the same global batch of 32)."""
    given_batch = args.batch_size is not None
    for key, value in presets[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not given_batch and args.global_batch and args.batch_size and args.global_batch % (args.batch_size * world):
        fits = [b for b in range(args.batch_size, 0, -1) if args.global_batch % (b * world) == 0]
        args.batch_size = fits[0] if fits else args.batch_size  # none: the engine names the flags to change
    return args


def at_least(ap: argparse.ArgumentParser, args: argparse.Namespace, minimum: float, *flags: str) -> None:
    """Refuse each of `flags` (`--max-train`) given below `minimum`."""
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None and value < minimum:
            ap.error(f"{flag} {value}: must be at least {minimum}")


def check_shared_flags(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a bad shared flag (after the preset merge) before anything is loaded; exits through `ap.error`."""
    at_least(ap, args, 1, "--epochs", "--max-length", "--batch-size", "--global-batch", "--micro-batch-tokens",
             "--compiled-micro-batch-tokens",
             "--max-steps",
             "--log-every", "--eval-every")
    at_least(ap, args, 0, "--weight-decay", "--max-grad-norm")
    if not args.lr > 0:
        ap.error(f"--lr {args.lr}: must be greater than 0")
    if not 0 <= args.warmup_ratio < 1:
        ap.error(f"--warmup-ratio {args.warmup_ratio}: must be in [0, 1)")
    if args.global_batch is not None and args.global_batch % args.batch_size:
        ap.error(f"--global-batch {args.global_batch} must be a multiple of --batch-size {args.batch_size}")
    try:
        parse_policy(args.policy)
    except ValueError as e:
        ap.error(as_flags(str(e)))
    if args.report_to == "tensorboard" and not tensorboard_available():
        ap.error(TENSORBOARD_MISSING)
    if args.private and not args.push_to_hub:
        ap.error("--private applies to --push-to-hub; give both or neither")
    if args.push_to_hub:
        try:
            check_repo_id(args.push_to_hub)
            resolve_token()
        except HubError as e:
            ap.error(f"--push-to-hub {args.push_to_hub}: {e}")
