"""Packing: samples of known token length into fixed-size bins, best-fit-decreasing, never splitting one.

Packing needs only the samples' lengths, so everything here works on a NumPy array of lengths (4 bytes a
sample) and returns a bin number per sample; the tokens are gathered later, pack by pack. Best-fit-decreasing
(BFD) takes samples longest first and puts each into the open bin it fills most tightly (the smallest gap that
still fits), opening a new bin when none fits. The open gaps are kept as bits of one Python integer (bit g set
= some bin has exactly g tokens free), so "smallest gap >= n" is a shift and a lowest-set-bit, O(seq_len / 64)
machine words, instead of a scan over bins. `l2_lower_bound` is Martello & Toth's L2 bound on the number of bins
any packer needs; `total / (L2 * seq_len)` is therefore an upper bound on the packing efficiency any packer can
reach, printed beside ours. `pack_columns` lays the samples of many bins out as the rows the trainer reads.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100  # the label of a token that is not trained (PyTorch cross-entropy's ignore_index)


def pack_best_fit_decreasing(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, int]:
    """Assign each sample to a bin of `capacity` tokens by best-fit-decreasing.

    Returns (bin_of, n_bins): `bin_of[i]` is the bin of sample i, bins are numbered 0..n_bins-1 in the order they
    were opened. Deterministic (ties keep input order). Every length must be in 1..capacity. Example:
    >>> pack_best_fit_decreasing(np.array([3, 5, 2, 4]), 7)
    (array([1, 0, 0, 1], dtype=int32), 2)
    """
    lengths = np.asarray(lengths)
    if lengths.size and (lengths.min() < 1 or lengths.max() > capacity):
        raise ValueError(f"sample lengths must be in 1..{capacity}, got {lengths.min()}..{lengths.max()}")
    # Longest first, ties in input order; as gaps below 2**16, a radix sort of 2 bytes a sample.
    order = np.argsort((capacity - lengths).astype(np.uint16 if capacity < 2**16 else np.int64), kind="stable")
    bin_of = np.empty(len(lengths), dtype=np.int32)
    open_gaps = 0  # bit g set <=> bins_with_gap[g] is non-empty
    bins_with_gap: dict[int, list[int]] = {}  # gap -> ids of open bins with exactly that many free tokens
    n_bins = 0
    for i, n in _in_chunks(order, lengths):
        fits = open_gaps >> n
        if fits:
            gap = n + ((fits & -fits).bit_length() - 1)  # the smallest gap >= n
            stack = bins_with_gap[gap]
            b = stack.pop()
            if not stack:
                del bins_with_gap[gap]
                open_gaps ^= 1 << gap
        else:
            b, gap = n_bins, capacity
            n_bins += 1
        bin_of[i] = b
        left = gap - n
        if left:  # a full bin is closed for good
            stack = bins_with_gap.get(left)
            if stack is None:
                bins_with_gap[left] = [b]
                open_gaps |= 1 << left
            else:
                stack.append(b)
    return bin_of, n_bins


def _in_chunks(order: np.ndarray, lengths: np.ndarray, size: int = 1 << 16):
    """(index, length) pairs in `order`, converted to Python ints 64k at a time: a full .tolist() of a million
    samples would hold ~70 MB of int objects."""
    for start in range(0, len(order), size):
        part = order[start:start + size]
        yield from zip(part.tolist(), lengths[part].tolist())


def l2_lower_bound(lengths: np.ndarray, capacity: int) -> int:
    """Martello–Toth L2: a lower bound on the number of `capacity` bins needed for items of these lengths.

    For each alpha in 0..capacity/2: items longer than capacity-alpha (J1) and longer than capacity/2 (J2) each
    need their own bin; items in [alpha, capacity/2] (J3) can only use the room J2's bins leave, the rest needs
    new bins. L2 is the max over alpha; it is >= the trivial ceil(total / capacity). O(n + capacity).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        return 0
    count = np.bincount(lengths, minlength=capacity + 1).astype(np.int64)
    mass = count * np.arange(capacity + 1, dtype=np.int64)
    cnt_le = np.cumsum(count)  # cnt_le[s] = number of items with length <= s
    mass_le = np.cumsum(mass)
    half = capacity // 2  # items of length <= half are "small" (at most capacity/2)
    alpha = np.arange(0, half + 1, dtype=np.int64)
    big_threshold = capacity - alpha  # J1: length > capacity - alpha
    n_j1 = cnt_le[capacity] - cnt_le[big_threshold]
    n_j2 = cnt_le[big_threshold] - cnt_le[half]  # half < length <= capacity - alpha
    mass_j2 = mass_le[big_threshold] - mass_le[half]
    below_alpha = np.where(alpha > 0, mass_le[np.maximum(alpha - 1, 0)], 0)
    mass_j3 = mass_le[half] - below_alpha  # alpha <= length <= half
    spill = mass_j3 - (n_j2 * capacity - mass_j2)
    extra = np.maximum(0, -(-spill // capacity))
    return int(max((n_j1 + n_j2 + extra).max(), -(-int(lengths.sum()) // capacity)))


def pack_columns(input_ids: np.ndarray, loss_mask: np.ndarray, seq_lens: np.ndarray,
                 samples_per_pack: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Packs from samples laid end to end: the row format of OUT/train (see build.py), vectorised.

    `input_ids` / `loss_mask` hold all samples' tokens back to back, `seq_lens` their lengths, and the first
    `samples_per_pack[0]` samples make pack 0, the next ones pack 1, and so on. Returns, per column, the flat
    int32 values and the int32 offsets of each pack (an Arrow ListArray's two buffers):
    - input_ids: the tokens, unpadded;
    - labels: input_ids where the mask is 1, else -100 (aligned, unshifted: the model shifts); a sample's first
      label is always -100, since after the shift it would be predicted from the previous sample's last token;
    - position_ids: restart at 0 for each sample;
    - seq_lens: the samples' lengths in order (their sum is the pack's length).
    """
    seq_lens = np.asarray(seq_lens, dtype=np.int64)
    input_ids = np.asarray(input_ids, dtype=np.int32)
    starts = np.concatenate([[0], np.cumsum(seq_lens)[:-1]]).astype(np.int64)
    labels = np.where(np.asarray(loss_mask) != 0, input_ids, np.int32(IGNORE_INDEX)).astype(np.int32, copy=False)
    labels[starts[seq_lens > 0]] = IGNORE_INDEX
    # int32 throughout (as the offsets below): no token-sized int64 temporaries, which a build allocates afresh for
    # every chunk of packs (each a page fault per 4 KB)
    position_ids = np.arange(len(input_ids), dtype=np.int32)
    position_ids -= np.repeat(starts.astype(np.int32), seq_lens)
    sample_offsets = np.concatenate([[0], np.cumsum(samples_per_pack)]).astype(np.int64)
    token_offsets = np.concatenate([[0], np.cumsum(seq_lens)])[sample_offsets].astype(np.int32)
    return {"input_ids": (input_ids, token_offsets), "labels": (labels, token_offsets),
            "position_ids": (position_ids, token_offsets),
            "seq_lens": (seq_lens.astype(np.int32), sample_offsets.astype(np.int32))}


def pack_rows(samples: list[tuple[list[int], list[int]]]) -> dict[str, list[int]]:
    """One pack from its samples' (input_ids, loss_mask), as plain lists (see `pack_columns` for the format).

    >>> pack_rows([([5, 6], [0, 1]), ([7], [1])])["position_ids"]
    [0, 1, 0]
    """
    if not samples:
        return {"input_ids": [], "labels": [], "position_ids": [], "seq_lens": []}
    ids = np.concatenate([np.asarray(i, dtype=np.int32) for i, _ in samples])
    mask = np.concatenate([np.asarray(m, dtype=np.int8) for _, m in samples])
    columns = pack_columns(ids, mask, np.array([len(i) for i, _ in samples]), np.array([len(samples)]))
    return {name: values.tolist() for name, (values, _) in columns.items()}
