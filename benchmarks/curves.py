"""Cost curves: seconds per epoch against trainable layers (with and without the frozen-trunk cache), sequence
length and dataset size; padding waste of SST-2 batches with and without length grouping. Plots as PNG.

Each point is `llama_ft.train.train` for two epochs on random token ids (random weights, classification head);
the second epoch is the one reported (with the cache, the first also builds it). The same starting weights are
copied for every point. The trunk-cache prediction is the no-cache epoch over llama_ft.train.trunk.flop_ratio
(bottom forward + 3x top over 3x top).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from llama_ft.hf.loading import build_model, random_model
from llama_ft.model.policies import apply_policy
from llama_ft.train import TrainConfig, train
from llama_ft.train.batching import epoch_batches, padding_waste
from llama_ft.train.trunk import find_split, flop_ratio

from .train_step import config, release_memory

SST2_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.tsv"


def random_dataset(vocab: int, n: int, seq: int | np.ndarray, seed: int = 1) -> list[dict]:
    """n examples of random ids (never 0-2, so never the pad id) of length `seq` (or lengths[i])."""
    g = np.random.default_rng(seed)
    lengths = np.full(n, seq) if np.isscalar(seq) else np.asarray(seq)
    return [{"input_ids": g.integers(3, vocab, int(ln)).tolist(), "label": i % 2} for i, ln in enumerate(lengths)]


def run_epochs(base, data: list[dict], policy: str, cache: bool, amp: str, batch: int, device: torch.device,
               grouping: bool = True) -> dict:
    """Train a copy of `base` for two epochs; {"epoch1_s", "epoch2_s", "tok_s", "padding_waste"}."""
    model = copy.deepcopy(base)
    cfg = TrainConfig(policy=policy, amp=amp, batch_size=batch, epochs=2, trunk_cache=cache, progress=False,
                      device=str(device), length_grouping=grouping, lr=1e-5)
    r = train(model, data, cfg)
    del model
    release_memory()
    return {"epoch1_s": round(r.epoch_seconds[0], 4), "epoch2_s": round(r.epoch_seconds[1], 4),
            "tok_s": round(r.tokens_per_second, 1), "padding_waste": round(r.padding_waste, 4)}


def _usable(cfg, policy: str) -> tuple[bool, float]:
    """(the cache applies, flop_ratio) for `policy`, from a meta model."""
    m = build_model(cfg, "classification", 2)
    apply_policy(m, policy)
    split = find_split(m)
    usable = split.has_frozen_bottom and (split.start > 0 or not split.per_token)
    return usable, flop_ratio(m, split)


def layers_curve(shape: str, ks: list[int], n: int, seq: int, batch: int, amp: str, device) -> list[dict]:
    """Epoch seconds vs trainable decoder layers K (0 = head only), with and without the trunk cache."""
    cfg = config(shape)
    base = random_model(cfg, "classification", 2, dtype=torch.float32, device=device, seed=0)
    data = random_dataset(cfg.vocab_size, n, seq)
    rows = []
    for k in ks:
        policy = "head" if k == 0 else f"last:{k}"
        usable, ratio = _usable(cfg, policy)
        row = {"shape": shape, "policy": policy, "k": k, "n": n, "seq": seq, "batch": batch,
               "flop_ratio": None if ratio == float("inf") else round(ratio, 3)}
        row["no_cache"] = run_epochs(base, data, policy, False, amp, batch, device)
        if usable:
            row["cache"] = run_epochs(base, data, policy, True, amp, batch, device)
            row["speedup"] = round(row["no_cache"]["epoch2_s"] / row["cache"]["epoch2_s"], 2)
            if row["flop_ratio"]:
                row["predicted_epoch2_s"] = round(row["no_cache"]["epoch2_s"] / ratio, 4)
                # Undefined where the prediction is ~1 (almost everything trains): noise over ~0.
                row["fraction_of_predicted"] = round((row["speedup"] - 1) / (ratio - 1), 2) if ratio > 1.1 else None
        rows.append(row)
    return rows


def _epoch_curve(shape: str, points: list[tuple[int, int]], batch: int, amp: str, device,
                 policy: str) -> list[dict]:
    """Epoch times with and without the trunk cache at each (examples, sequence length) point."""
    cfg = config(shape)
    base = random_model(cfg, "classification", 2, dtype=torch.float32, device=device, seed=0)
    rows = []
    for n, seq in points:
        data = random_dataset(cfg.vocab_size, n, seq)
        rows.append({"shape": shape, "policy": policy, "seq": seq, "n": n, "batch": batch,
                     "no_cache": run_epochs(base, data, policy, False, amp, batch, device),
                     "cache": run_epochs(base, data, policy, True, amp, batch, device)})
    return rows


def seq_curve(shape: str, seqs: list[int], n: int, batch: int, amp: str, device, policy: str = "last:4") -> list[dict]:
    return _epoch_curve(shape, [(n, seq) for seq in seqs], batch, amp, device, policy)


def size_curve(shape: str, ns: list[int], seq: int, batch: int, amp: str, device, policy: str = "last:4") -> list[dict]:
    return _epoch_curve(shape, [(n, seq) for n in ns], batch, amp, device, policy)


def sst2_lengths(max_length: int = 128) -> np.ndarray:
    """Token counts of the SST-2 training sentences under the SmolLM2 tokenizer (cut at max_length, as the recipe)."""
    import llama_ft
    from llama_ft.tasks.sst2 import data as sst2
    tok = llama_ft.load_tokenizer("smollm2-135m")
    rows = sst2.load_sst2(str(SST2_TRAIN.parent))["train"]
    return np.array([len(ex["input_ids"]) for ex in sst2.encode(rows, tok, max_length)])


def padding_table(lengths: np.ndarray, batch_sizes: list[int], seed: int = 1) -> list[dict]:
    """Padding waste (1 - real / padded tokens) of one epoch's batches, length-grouped and plain shuffled."""
    rows = []
    for bs in batch_sizes:
        row = {"batch": bs, "examples": len(lengths), "mean_len": round(float(lengths.mean()), 2)}
        for name, grouped in (("grouped", True), ("shuffled", False)):
            real, padded = padding_waste(lengths, epoch_batches(lengths, bs, seed, 0, grouped))
            row[f"waste_{name}"] = round(1 - real / padded, 4)
        rows.append(row)
    return rows


def grouping_epochs(shape: str, lengths: np.ndarray, n: int, batch: int, amp: str, device,
                    policy: str = "last:4") -> dict:
    """Epoch seconds on n SST-2-length examples, with and without length grouping (no cache)."""
    cfg = config(shape)
    base = random_model(cfg, "classification", 2, dtype=torch.float32, device=device, seed=0)
    g = np.random.default_rng(0)
    data = random_dataset(cfg.vocab_size, n, g.choice(lengths, n, replace=False))
    out = {"shape": shape, "policy": policy, "n": n, "batch": batch}
    for name, grouped in (("grouped", True), ("shuffled", False)):
        out[name] = run_epochs(base, data, policy, False, amp, batch, device, grouping=grouped)
    return out


# ---------------------------------------------------------------------------------------------------- plots
def plot_all(res: dict, out_dir: Path, where: str) -> list[str]:
    """Write the PNGs for whatever curves `res` holds; returns their paths."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []

    def save(fig, name):
        p = out_dir / name
        fig.tight_layout()
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(str(p))

    if res.get("layers"):
        rows = res["layers"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["k"] for r in rows], [r["no_cache"]["epoch2_s"] for r in rows], "o-", label="no cache")
        c = [r for r in rows if "cache" in r]
        ax.plot([r["k"] for r in c], [r["cache"]["epoch2_s"] for r in c], "s-", label="trunk cache (epoch 2)")
        ax.plot([r["k"] for r in c], [r["cache"]["epoch1_s"] for r in c], "^:",
                label="trunk cache (epoch 1, builds it)")
        p = [r for r in c if r.get("predicted_epoch2_s")]
        ax.plot([r["k"] for r in p], [r["predicted_epoch2_s"] for r in p], "k--", lw=1, label="FLOP-ratio prediction")
        r0 = rows[0]
        ax.set(xlabel="trainable decoder layers K (0 = head only)", ylabel="seconds per epoch",
               title=f"{r0['shape']}: {r0['n']} x {r0['seq']} tokens, batch {r0['batch']} ({where})")
        ax.legend()
        save(fig, "curve_layers.png")
    for key, xkey, xlabel, name in (("seq", "seq", "sequence length (tokens)", "curve_seq.png"),
                                    ("size", "n", "training examples", "curve_size.png")):
        rows = res.get(key)
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for mode, style in (("no_cache", "o-"), ("cache", "s-")):
            ax.plot([r[xkey] for r in rows], [r[mode]["epoch2_s"] for r in rows], style,
                    label=mode.replace("_", " ") + " (epoch 2)")
        r0 = rows[0]
        fixed = f"{r0['n']} examples" if key == "seq" else f"seq {r0['seq']}"
        ax.set(xlabel=xlabel, ylabel="seconds per epoch", xscale="log", yscale="log",
               title=f"{r0['shape']} {r0['policy']}, {fixed}, batch {r0['batch']} ({where})")
        ax.set_xticks([r[xkey] for r in rows], [str(r[xkey]) for r in rows])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.legend()
        save(fig, name)
    if res.get("padding"):
        rows = res["padding"]
        fig, ax = plt.subplots(figsize=(6, 4))
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [100 * r["waste_shuffled"] for r in rows], 0.4, label="shuffled")
        ax.bar(x + 0.2, [100 * r["waste_grouped"] for r in rows], 0.4, label="length-grouped")
        ax.set_xticks(x, [str(r["batch"]) for r in rows])
        ax.set(xlabel="batch size", ylabel="padding tokens, % of the padded batch",
               title=f"SST-2 train ({rows[0]['examples']:,} sentences, SmolLM2 tokenizer)")
        ax.legend()
        save(fig, "padding.png")
    return paths
