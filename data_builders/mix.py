"""Mixture sampling: how many times each kept record of each source goes into the build.

A source is given as `PATH:WEIGHT` (a proportion of the build's *trained tokens*), `PATH:xE` (exactly E epochs,
E may be fractional, e.g. `x0.5`) or a bare `PATH` (= `PATH:x1`).

Token targets (`token_targets`):
- only weighted sources: weights are normalised to sum to 1 and the build is the largest mixture that needs no
  up-sampling: total = min over sources of available_s / w_s, so the scarcest source is used exactly once and the
  others are down-sampled (AgentTuning's 0.2 agent : 0.8 general, with the general data sampled to the ratio);
- some sources in epochs: their tokens are fixed (E x available) and make up 1 - sum(weights) of the total; each
  weighted source gets weight x total, up- or down-sampled as needed. Weights must then sum to less than 1.

Sampling a source to its target (`sample_to_target`): whole epochs first (floor(target / available) copies of
every record), then records in a seeded random order until the remaining trained tokens are reached (the last
record is taken only if that lands closer to the target). Deterministic from the seed; off by at most half a
record's tokens per source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import TrajtuneError

_SPEC_RE = re.compile(r"^(?P<path>.+?)(?::(?:(?P<weight>\d*\.?\d+(?:[eE][-+]?\d+)?)|x(?P<epochs>\d*\.?\d+)))?$")


@dataclass(frozen=True)
class SourceSpec:
    path: str
    weight: float | None = None  # proportion of trained tokens, or None when given in epochs
    epochs: float | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.weight}" if self.weight is not None else f"{self.path}:x{self.epochs:g}"


def parse_source_spec(spec: str) -> SourceSpec:
    """'a.jsonl:0.2' -> weight 0.2; 'b.jsonl:x2' -> 2 epochs; 'c.jsonl' -> 1 epoch."""
    m = _SPEC_RE.match(spec.strip())
    if not m or not m.group("path"):
        raise TrajtuneError(f"--data {spec!r}: expected PATH, PATH:WEIGHT (e.g. a.jsonl:0.2) or PATH:xEPOCHS (e.g. b.jsonl:x2)")
    if m.group("weight") is not None:
        weight = float(m.group("weight"))
        if weight <= 0:
            raise TrajtuneError(f"--data {spec!r}: the weight must be > 0")
        return SourceSpec(m.group("path"), weight=weight)
    epochs = float(m.group("epochs")) if m.group("epochs") is not None else 1.0
    if epochs <= 0:
        raise TrajtuneError(f"--data {spec!r}: the number of epochs must be > 0")
    return SourceSpec(m.group("path"), epochs=epochs)


def token_targets(specs: list[SourceSpec], available: list[int]) -> list[float]:
    """Trained-token target per source (see the module docstring). `available` = trained tokens kept per source."""
    fixed = [s.epochs * a if s.epochs is not None else 0.0 for s, a in zip(specs, available)]
    weighted = [i for i, s in enumerate(specs) if s.weight is not None]
    if not weighted:
        return fixed
    for i in weighted:
        if available[i] == 0:
            raise TrajtuneError(f"source {specs[i].path} has no trained tokens left after filtering; it cannot make up "
                                f"{specs[i].weight} of the mixture")
    weight_sum = sum(specs[i].weight for i in weighted)
    if len(weighted) == len(specs):
        total = min(available[i] * weight_sum / specs[i].weight for i in weighted)
        return [total * s.weight / weight_sum for s in specs]
    if weight_sum >= 1:
        raise TrajtuneError(f"with sources given in epochs the weights are fractions of the total and must sum to < 1, "
                            f"got {weight_sum:g}")
    total = sum(fixed) / (1 - weight_sum)
    if total == 0:
        raise TrajtuneError("the sources given in epochs have no trained tokens, so weights have nothing to be a fraction of")
    return [s.weight * total if s.weight is not None else fixed[i] for i, s in enumerate(specs)]


def sample_to_target(trained: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    """Indices into `trained` (with repeats for whole epochs) whose trained tokens sum closest to `target`.

    int32 indices for fewer than 2**31 records: a build samples millions of them."""
    trained = np.asarray(trained)
    available = int(trained.sum(dtype=np.int64))
    index_type = np.int32 if len(trained) < 2**31 else np.int64
    if available == 0 or target <= 0:
        return np.zeros(0, dtype=index_type)
    epochs = int(target // available)
    rest = target - epochs * available
    order = np.arange(len(trained), dtype=index_type)
    rng.shuffle(order)  # in place: the same order as rng.permutation(len(trained)), without its int64 copy
    cum = np.cumsum(trained[order], dtype=np.int64)
    k = int(np.searchsorted(cum, rest))  # cum[k-1] < rest <= cum[k]
    if k < len(order) and cum[k] - rest < rest - (cum[k - 1] if k else 0):
        k += 1  # taking the crossing record lands closer to the target
    del cum
    return np.concatenate([np.tile(np.arange(len(trained), dtype=index_type), epochs), order[:k]])
