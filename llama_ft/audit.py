"""Parameter audit from a config alone: counts, breakdown by module, bytes, and training memory per policy.

    python -m llama_ft.audit ../shared/data/llama3/Llama-3.2-1B [--policy lora:8] [--json]
    python -m llama_ft.audit llama-3.1-8b --devices 8 --shard fsdp --policy full --batch 16 --seq-len 384
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections import defaultdict

import torch

from llama_ft.hf.loading import build_model
from llama_ft.model.config import ConfigError, LlamaConfig
from llama_ft.model.memory import RUNTIME_RESERVE, SHARDS, fits, training_memory
from llama_ft.model.params import count_parameters
from llama_ft.model.policies import apply_policy, parse_policy

POLICIES = ("head", "last:1", "last:4", "lora:8", "full")
TASK_NAMES = ("causal-lm", "classification", "qa")


def memory_estimate(counts: dict, weight_dtype: torch.dtype) -> dict:
    """Training bytes as the engine holds them (no activations): frozen weights in `weight_dtype`, trainable
    weights as fp32 masters (the only copy: autocast casts them per forward), fp32 gradients, AdamW's two fp32
    states."""
    t = counts["trainable"]
    out = {"frozen_weights": counts["frozen"] * weight_dtype.itemsize, "trainable_weights": 4 * t,
           "grads": 4 * t, "adamw": 8 * t}
    out["total"] = sum(out.values())
    return out


def audit(src: str, tasks=TASK_NAMES, policies=POLICIES, num_labels: int = 2,
          weight_dtype: torch.dtype = torch.bfloat16, *, batch: int = 16, seq_len: int = 384, devices: int = 1,
          shard: str = "none", device_memory_gib: float = 80.0) -> dict:
    """Audit every task × policy for a model source, from its config only (meta device, nothing read); each
    policy's `memory_plan` is the training memory per device (llama_ft.model.memory) for `batch` sequences of
    `seq_len` tokens per device on `devices` devices sharded by `shard`, and whether it fits `device_memory_gib`."""
    if not device_memory_gib > 0:
        raise ValueError(f"device_memory_gib={device_memory_gib!r}; it must be a positive number of GiB.")
    cfg = LlamaConfig.from_pretrained(src)
    memory = int(device_memory_gib * 2**30)
    report = {"source": str(src), "config": {k: v for k, v in cfg.to_dict().items()
                                               if not k.startswith("_")}, "tasks": {},
              "plan": {"batch": batch, "seq_len": seq_len, "devices": devices, "shard": shard,
                       "device_memory_gib": device_memory_gib, "runtime_reserve": RUNTIME_RESERVE}}
    for task in tasks:
        model = build_model(cfg, task, num_labels)
        base = count_parameters(model)
        entry = {"total": base["total"], "by_module": base["by_module"], "bytes": {}, "policies": {}}
        for dt in (torch.float32, torch.bfloat16):
            entry["bytes"][str(dt).removeprefix("torch.")] = base["total"] * dt.itemsize
        for pol in policies:
            # LoRA adds modules, so it gets its own copy; the other policies only flip requires_grad.
            m = copy.deepcopy(model) if pol.startswith("lora") else model
            apply_policy(m, pol)
            c = count_parameters(m)
            plan = training_memory(m, batch=batch, seq_len=seq_len, devices=devices, shard=shard)
            plan["fits"], plan["fits_checkpointed"] = fits(plan["total"], memory), fits(
                plan["total_checkpointed"], memory)
            entry["policies"][pol] = {"total": c["total"], "trainable": c["trainable"], "frozen": c["frozen"],
                                      "memory_bytes": memory_estimate(c, weight_dtype), "memory_plan": plan}
        report["tasks"][task] = entry
    return report


def _gib(b: int) -> str:
    return f"{b / 2**30:.2f} GiB"


def format_report(rep: dict) -> str:
    lines = [f"# Parameter audit: {rep['source']}", ""]
    lines += ["| task | total parameters | fp32 | bf16 |", "|---|---:|---:|---:|"]
    for task, e in rep["tasks"].items():
        lines.append(f"| {task} | {e['total']:,} | {_gib(e['bytes']['float32'])} | {_gib(e['bytes']['bfloat16'])} |")
    for task, e in rep["tasks"].items():
        lines += ["", f"## {task}: trainable parameters and training memory (bf16 frozen weights, fp32 "
                      "trainable weights/grads/AdamW, activations not included)", "",
                  "| policy | total | trainable | frozen | memory |", "|---|---:|---:|---:|---:|"]
        for pol, p in e["policies"].items():
            lines.append(f"| {pol} | {p['total']:,} | {p['trainable']:,} | {p['frozen']:,} | "
                         f"{_gib(p['memory_bytes']['total'])} |")
    e = next(iter(rep["tasks"].values()))
    lines += ["", "## breakdown by module (first task)", "", "| module | parameters |", "|---|---:|"]
    groups: dict[str, int] = defaultdict(int)
    for name, n in e["by_module"].items():
        if name.startswith("layers."):
            _, idx, kind = name.split(".")
            groups[f"layers.*.{kind} (x{rep['config']['num_hidden_layers']})"] += n
        else:
            groups[name] += n
    lines += [f"| {k} | {v:,} |" for k, v in groups.items()]
    for task, e in rep["tasks"].items():
        lines += [""] + format_plan(rep["plan"], task, e["policies"])
    return "\n".join(lines)


def format_plan(plan: dict, task: str, policies: dict) -> list[str]:
    """The memory-plan table of one task: GiB per device, and whether each policy fits."""
    where = (f"{plan['devices']} device(s), " + ("FSDP" if plan["shard"] == "fsdp" else
                                                 "replicated (DDP)" if plan["devices"] > 1 else "one replica"))
    lines = [f"## {task}: memory per device, {where}, batch {plan['batch']} x {plan['seq_len']} tokens per "
             f"device, bf16 autocast; fits = total + {_gib(plan['runtime_reserve'])} runtime reserve <= "
             f"{plan['device_memory_gib']:g} GiB", "",
             "| policy | weights | grads | AdamW | bf16 working | comm | activations | total | fits "
             "| activations (ckpt) | total (ckpt) | fits (ckpt) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for pol, p in policies.items():
        m = p["memory_plan"]
        cells = [_gib(m[k]) for k in ("weights", "grads", "optimizer", "working", "comm", "activations", "total")]
        cells += ["yes" if m["fits"] else "no", _gib(m["activations_checkpointed"]),
                  _gib(m["total_checkpointed"]), "yes" if m["fits_checkpointed"] else "no"]
        lines.append(f"| {pol} | " + " | ".join(cells) + " |")
    return lines


def _flags(message: str) -> str:
    """A library error in the command line's words: API argument names become flags."""
    for arg, flag in (("device_memory_gib=", "--device-memory "), ("seq_len=", "--seq-len "),
                      ("batch=", "--batch "), ("devices=", "--devices ")):
        message = message.replace(arg, flag)
    return message


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llama_ft.audit", description=__doc__.splitlines()[0])
    ap.add_argument("source",
                    help="model folder, config.json, preset name (llama-3.2-1b, smollm2-135m), .gguf or Hub id")
    ap.add_argument("--task", choices=TASK_NAMES + ("all",), default="all")
    ap.add_argument("--policy", "--train", dest="policy", action="append",
                    help="policy to audit (repeatable; --train is the old name); default: " + ", ".join(POLICIES))
    ap.add_argument("--num-labels", type=int, default=2)
    ap.add_argument("--devices", type=int, default=1, help="devices training together (default 1)")
    ap.add_argument("--shard", choices=SHARDS, default="none",
                    help="none: a full replica per device (DDP); fsdp: parameters, gradients and AdamW sharded")
    ap.add_argument("--batch", type=int, default=16, help="sequences per device per forward (default 16)")
    ap.add_argument("--seq-len", type=int, default=384, help="tokens per sequence (default 384)")
    ap.add_argument("--device-memory", type=float, default=80.0, help="GiB per device (default 80)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        policies = tuple(str(parse_policy(p)) for p in (args.policy or POLICIES))
        tasks = TASK_NAMES if args.task == "all" else (args.task,)
        rep = audit(args.source, tasks, policies, args.num_labels, batch=args.batch, seq_len=args.seq_len,
                    devices=args.devices, shard=args.shard, device_memory_gib=args.device_memory)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {_flags(str(e))}", file=sys.stderr)
        return 2
    rep["seconds"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep) + f"\n\n({rep['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
