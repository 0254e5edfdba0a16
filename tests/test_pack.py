"""Packing: best-fit-decreasing never splits a sample nor overfills a bin, matches a plain BFD, and the
Martello-Toth L2 bound is a true lower bound; pack rows lose no token and restart positions per sample."""

import itertools

import numpy as np
import pytest

from trajtune.data_builders.pack import IGNORE_INDEX, l2_lower_bound, pack_best_fit_decreasing, pack_rows


def reference_bfd(lengths, capacity):
    """Textbook BFD, O(n * bins): longest first, into the fullest bin it fits, ties to the earliest such bin."""
    loads = []
    for n in sorted(lengths, reverse=True):
        best = None
        for b, load in enumerate(loads):
            if load + n <= capacity and (best is None or load > loads[best]):
                best = b
        if best is None:
            loads.append(n)
        else:
            loads[best] += n
    return sorted(loads)


def optimal_bins(lengths, capacity):
    """Exact minimum number of bins by trying every assignment (tiny inputs only)."""
    n = len(lengths)
    for k in range(1, n + 1):
        for assign in itertools.product(range(k), repeat=n):
            loads = [0] * k
            for item, b in zip(lengths, assign):
                loads[b] += item
            if max(loads) <= capacity:
                return k
    return n


@pytest.mark.parametrize("seed", range(5))
def test_bfd_places_every_sample_once_within_capacity(seed):
    rng = np.random.default_rng(seed)
    capacity = 512
    lengths = rng.integers(1, capacity + 1, 2000)
    bin_of, n_bins = pack_best_fit_decreasing(lengths, capacity)
    assert bin_of.shape == lengths.shape and bin_of.min() == 0 and bin_of.max() == n_bins - 1
    loads = np.bincount(bin_of, weights=lengths, minlength=n_bins)
    assert loads.max() <= capacity and loads.min() > 0
    assert loads.sum() == lengths.sum()  # no token lost or counted twice


@pytest.mark.parametrize("seed", range(5))
def test_bfd_equals_textbook_best_fit_decreasing(seed):
    rng = np.random.default_rng(100 + seed)
    lengths = rng.integers(1, 300, 300)
    bin_of, n_bins = pack_best_fit_decreasing(lengths, 400)
    ours = sorted(np.bincount(bin_of, weights=lengths, minlength=n_bins).astype(int).tolist())
    assert ours == reference_bfd(lengths.tolist(), 400)


def test_l2_bound_classic_example_beats_the_trivial_bound():
    # Three items of 6 in bins of 10: total/capacity says 2 bins, but no two fit together, so 3 are needed.
    assert l2_lower_bound(np.array([6, 6, 6]), 10) == 3
    assert l2_lower_bound(np.array([5, 5, 5, 5]), 10) == 2
    assert l2_lower_bound(np.array([], dtype=int), 10) == 0


@pytest.mark.parametrize("seed", range(30))
def test_l2_bound_never_exceeds_optimum(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 11, int(rng.integers(1, 7))).tolist()
    bound = l2_lower_bound(np.array(lengths), 10)
    assert -(-sum(lengths) // 10) <= bound <= optimal_bins(lengths, 10)


def test_bfd_rejects_sample_longer_than_capacity():
    with pytest.raises(ValueError, match="1..8"):
        pack_best_fit_decreasing(np.array([3, 9]), 8)


def test_pack_rows_concatenates_without_loss_and_restarts_positions():
    samples = [([11, 12, 13], [0, 1, 1]), ([21, 22, 23], [1, 1, 0]), ([31], [0])]
    row = pack_rows(samples)
    assert row["input_ids"] == [11, 12, 13, 21, 22, 23, 31]
    # 21 is trained but starts a sample: after the shift it would be predicted from 13, another sample's token.
    assert row["labels"] == [IGNORE_INDEX, 12, 13, IGNORE_INDEX, 22, IGNORE_INDEX, IGNORE_INDEX]
    assert row["position_ids"] == [0, 1, 2, 0, 1, 2, 0]
    assert row["seq_lens"] == [3, 3, 1] and sum(row["seq_lens"]) == len(row["input_ids"])
