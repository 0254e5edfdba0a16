"""A record's training samples in the build: its one joint render, or one sample per trained turn (per-turn).

A record stays one row of the map's cache whichever way it was rendered: it is the unit of dedup,
decontamination, the validation split, the mixture and the kept/dropped books, so the turns of one conversation
never straddle train and validation. A per-turn row holds its samples' tokens back to back, their lengths in
`sample_lens` and their count in `turn_samples` (0 for a joint row). Packing treats each sample as a sample:
`SampleIndex` turns the rows a split packs into (row, offset in the row, length) triples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def truncation_point(loss_mask: list[int], seq_len: int) -> int:
    """Length to cut a too-long sample to: the end of its last trained run that fits in seq_len, 0 if none.

    A trained run ends at the end-of-turn token of a trained message, which is a message boundary, so the cut
    never splits a message and what is kept still trains at least one message.
    >>> truncation_point([0, 1, 1, 0, 0, 1, 1, 0], 6)
    3
    """
    for end in range(min(seq_len, len(loss_mask)), 0, -1):
        if loss_mask[end - 1] and (end == len(loss_mask) or not loss_mask[end]):
            return end
    return 0


def record_row(got, seq_len: int, overlong: str) -> dict[str, Any]:
    """The row fields of a rendered record (`render.per_turn.RecordSamples`), over-long samples handled, or
    {reason, detail}.

    Joint: a sample past seq_len is cut after its last trained message that fits (`--overlong truncate`) or
    dropped. Per-turn: each sample is a whole context + its one trained turn, so one that does not fit cannot be
    cut; truncate keeps the samples that fit (the row is `truncated`), drop drops the record. A per-turn row's
    input_ids and loss_mask are arrays (int32, int8), its samples back to back; a joint row's are lists."""
    if got.turns is None:
        rendered = got.joint
        ids, mask = rendered.input_ids, rendered.loss_mask
        if not any(mask[1:]):
            return {"reason": "no_trained_token", "detail": "the rendered loss mask is empty"}
        truncated = len(ids) > seq_len
        if truncated:
            cut = truncation_point(mask, seq_len) if overlong == "truncate" else 0
            if cut == 0:
                how = "no trained message ends within seq_len" if overlong == "truncate" else "--overlong drop"
                return {"reason": "overlong", "detail": f"{len(ids)} tokens > seq_len {seq_len} ({how})"}
            ids, mask = ids[:cut], mask[:cut]
        # label 0 of a sample is always -100 (see pack.pack_columns), so its mask bit does not count
        return {"input_ids": ids, "loss_mask": mask, "n_tokens": len(ids), "n_trained": sum(mask[1:]),
                "truncated": truncated, "sample_lens": [len(ids)], "turn_samples": 0}
    turns = got.turns
    lens = np.asarray(turns.lens, np.int64)
    fit = lens <= seq_len
    if not fit.all() and (overlong == "drop" or not fit.any()):
        how = "no turn's sample fits" if overlong == "truncate" else "--overlong drop"
        return {"reason": "overlong", "detail": f"a per-turn sample of {lens.max()} tokens > seq_len {seq_len} ({how})"}
    ids, mask = turns.ids, turns.mask
    if not fit.all():
        keep = np.repeat(fit, lens)
        ids, mask = ids[keep], mask[keep]
    kept = lens[fit]
    firsts = np.cumsum(kept) - kept  # each kept sample's first token: its mask bit does not count
    n_trained = int(mask.sum(dtype=np.int64)) - int(mask[firsts].sum(dtype=np.int64))
    if not n_trained:
        return {"reason": "no_trained_token", "detail": "the rendered loss masks are empty"}
    return {"input_ids": ids, "loss_mask": mask, "n_tokens": len(ids), "n_trained": n_trained,
            "truncated": not fit.all(), "sample_lens": kept.tolist(), "turn_samples": len(kept)}


@dataclass
class SampleIndex:
    """The sample lengths of the rows that hold several samples (`rows`, ascending): row `rows[k]`'s lengths are
    `lens[starts[k]:starts[k + 1]]`. Rows not listed hold one sample, all of their tokens."""

    rows: np.ndarray
    starts: np.ndarray
    lens: np.ndarray

    @classmethod
    def read(cls, files, rows: np.ndarray) -> SampleIndex:
        """The `sample_lens` of `rows` (ascending global rows of the map's cache files, `arrow_io.CacheFiles`)."""
        from . import arrow_io

        rows = np.asarray(rows, np.int64)
        per_row: list[np.ndarray] = [np.zeros(0, np.int32)] * len(rows)
        for at, table in arrow_io.rows_by_batch(files, rows, ["sample_lens"]):
            column = table.column("sample_lens").combine_chunks()
            offsets, values = column.offsets.to_numpy(), column.values.to_numpy()
            for k, a, b in zip(at.tolist(), offsets[:-1].tolist(), offsets[1:].tolist()):
                per_row[k] = values[a:b]
        counts = np.fromiter(map(len, per_row), np.int64, len(rows))
        lens = np.concatenate([np.zeros(0, np.int32), *per_row]).astype(np.int32)
        return cls(rows, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), lens)

    def expand(self, rows: np.ndarray, n_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """`rows` (repeats allowed) as samples, in order: (row of each sample, its first token's offset in the row
        or None when every sample is a whole row, its length)."""
        if not len(self.rows):
            return rows, None, n_tokens[rows]
        k = np.minimum(np.searchsorted(self.rows, rows), len(self.rows) - 1)
        multi = self.rows[k] == rows
        if not multi.any():
            return rows, None, n_tokens[rows]
        counts = np.where(multi, self.starts[k + 1] - self.starts[k], 1)
        out_rows = np.repeat(rows, counts)
        first = np.cumsum(counts) - counts  # each row's first sample in the output
        multi_x = np.repeat(multi, counts)
        src = np.repeat(self.starts[k], counts) + np.arange(len(out_rows)) - np.repeat(first, counts)
        lens = n_tokens[out_rows].astype(np.int64)
        lens[multi_x] = self.lens[src[multi_x]]
        before = np.cumsum(lens) - lens  # tokens before each sample in the output, minus those before its row's first
        return out_rows, before - np.repeat(before[first], counts), lens

    def extra_context_tokens(self, n_tokens: np.ndarray) -> int:
        """Tokens of the per-turn rows beyond their last (longest-context) sample: the context repeated per turn."""
        if not len(self.rows):
            return 0
        last = self.lens[self.starts[1:] - 1]
        return int((n_tokens[self.rows].astype(np.int64) - last).sum())
