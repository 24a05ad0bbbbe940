"""Batches (llama_ft/train/batching.py): length grouping, rank splits."""
import numpy as np

from llama_ft.train.batching import epoch_batches, padding_waste, split_batch


def test_length_grouped_batches_deterministic_complete_and_less_padded():
    lengths = np.random.default_rng(0).integers(5, 200, size=1000)
    a = epoch_batches(lengths, 16, seed=1, epoch=0)
    assert [x.tolist() for x in a] == [x.tolist() for x in epoch_batches(lengths, 16, seed=1, epoch=0)]
    assert [x.tolist() for x in a] != [x.tolist() for x in epoch_batches(lengths, 16, seed=1, epoch=1)]
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    plain = epoch_batches(lengths, 16, seed=1, epoch=0, grouped=False)
    waste = [1 - r / p for r, p in (padding_waste(lengths, b) for b in (a, plain))]
    assert waste[0] < 0.1 < waste[1]


def test_split_batch_gives_every_rank_its_share_of_the_same_pieces():
    batch = np.arange(16)
    one = split_batch(batch, 4, 0, 1)
    two = [split_batch(batch, 4, r, 2) for r in range(2)]
    assert [p.tolist() for p in one] == [p.tolist() for p in (two[0][0], two[1][0], two[0][1], two[1][1])]
    assert split_batch(np.arange(1), 4, 0, 2) == []


def test_token_cap_halves_only_the_pieces_over_budget():
    lengths = np.array([10] * 8 + [100] * 8)
    batch = np.arange(16)
    pieces = split_batch(batch, 2, 0, 1, lengths, max_tokens=400)
    assert [p.tolist() for p in pieces] == [list(range(8)), [8, 9, 10, 11], [12, 13, 14, 15]]
    assert all(int(lengths[p].max()) * len(p) <= 400 for p in pieces)
    # One example over the budget stays whole (it cannot be split), and no cap leaves the pieces as they were.
    assert [p.tolist() for p in split_batch(np.arange(2), 1, 0, 1, np.array([500, 500]), 100)] == [[0], [1]]
    assert [p.tolist() for p in split_batch(batch, 2, 0, 1, lengths)] == [list(range(8)), list(range(8, 16))]


def test_token_cap_counts_the_length_a_piece_is_padded_to():
    """16 examples of 129 tokens fit 16 x 129 = 2,064 tokens as they are, not once padded to a multiple of 16
    (16 x 144 = 2,304)."""
    lengths, batch = np.full(16, 129), np.arange(16)
    assert len(split_batch(batch, 1, 0, 1, lengths, max_tokens=2064)) == 1
    pieces = split_batch(batch, 1, 0, 1, lengths, max_tokens=2064, multiple=lambda n: 16)
    assert [len(p) for p in pieces] == [8, 8]
