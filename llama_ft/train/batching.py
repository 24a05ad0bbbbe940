"""Batches: dynamic right padding, length-grouped shuffling, gradient-accumulation and rank splits."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

GROUP_STEPS = 50  # steps per length-sorted chunk: long enough to group lengths, short enough to stay random


def example_lengths(dataset: list[dict]) -> np.ndarray:
    return np.fromiter((len(ex["input_ids"]) for ex in dataset), dtype=np.int64, count=len(dataset))


def collate(examples: list[dict], pad_token_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad `input_ids` to the longest example, rounded up to a multiple of `multiple`; attention_mask marks
    real tokens; labels as tensors."""
    if pad_token_id is None:
        raise ValueError("model.config.pad_token_id is None; set it (e.g. to the EOS id) before training.")
    T = padded_length(max(len(ex["input_ids"]) for ex in examples), multiple)
    ids = torch.full((len(examples), T), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, ex in enumerate(examples):
        n = len(ex["input_ids"])
        ids[i, :n] = torch.as_tensor(ex["input_ids"], dtype=torch.long)
        mask[i, :n] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    for key in ("label", "start_positions", "end_positions"):
        if key in examples[0]:
            out[key] = torch.tensor([int(ex[key]) for ex in examples], dtype=torch.long)
    return out


def padded_length(longest: int, multiple: int) -> int:
    """`longest` rounded up to a multiple of `multiple`."""
    return -(-longest // multiple) * multiple


def epoch_batches(lengths: np.ndarray, global_batch: int, seed: int, epoch: int,
                  grouped: bool = True) -> list[np.ndarray]:
    """The epoch's optimizer-step batches of example indices, deterministic from (seed, epoch).

    Grouped: shuffle, cut into chunks of GROUP_STEPS batches, sort each chunk by length, cut into batches,
    shuffle the batch order. Every example appears once; the last batch may be smaller.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if grouped:
        chunk = GROUP_STEPS * global_batch
        order = np.concatenate([c[np.argsort(lengths[c], kind="stable")]
                                for c in np.split(order, range(chunk, len(order), chunk))] or [order])
    batches = [order[i:i + global_batch] for i in range(0, len(order), global_batch)]
    if grouped:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def split_batch(batch: np.ndarray, micro_batches: int, rank: int, world: int,
                lengths: np.ndarray | None = None, max_tokens: int | None = None,
                multiple: Callable[[int], int] | None = None) -> list[np.ndarray]:
    """This rank's micro-batches of one step: the step is cut into `micro_batches` contiguous (length-sorted)
    pieces and rank r takes pieces r, r + world, ...; one process and N processes thus see the same pieces.
    A batch smaller than `world` gives nothing to anybody (callers drop it). With `max_tokens`, a piece whose
    padded size (its longest example x its examples) exceeds it is halved until it fits or holds one example:
    the step's gradient is the same, and activation memory follows the budget, not the longest batch.
    `multiple`: as in padding_waste, the budget counting each piece's length as it will be padded."""
    n = min(micro_batches, len(batch))
    n -= n % world
    if n == 0:
        return []
    pieces = np.array_split(batch, n)[rank::world]
    if max_tokens is None:
        return pieces
    return [q for p in pieces for q in cap_tokens(p, lengths, max_tokens, multiple)]


def cap_tokens(piece: np.ndarray, lengths: np.ndarray, max_tokens: int,
               multiple: Callable[[int], int] | None = None) -> list[np.ndarray]:
    """`piece` halved (recursively) until each part's padded tokens (its longest example, rounded up to a multiple
    of multiple(longest) when given, x its examples) are at most `max_tokens` (or it is one example)."""
    longest = int(lengths[piece].max())
    if len(piece) == 1 or padded_length(longest, multiple(longest) if multiple else 1) * len(piece) <= max_tokens:
        return [piece]
    return [q for half in np.array_split(piece, 2) for q in cap_tokens(half, lengths, max_tokens, multiple)]


def padding_waste(lengths: np.ndarray, pieces: list[np.ndarray],
                  multiple: Callable[[int], int] | None = None) -> tuple[int, int]:
    """(real tokens, padded tokens) of a list of micro-batches of indices, each padded to its longest example,
    rounded up to a multiple of multiple(longest) when given."""
    real = padded = 0
    for p in pieces:
        ln = lengths[p]
        longest = int(ln.max())
        real += int(ln.sum())
        padded += padded_length(longest, multiple(longest) if multiple else 1) * len(p)
    return real, padded


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Inference batches of indices sorted by length (longest first, so memory peaks at once)."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
