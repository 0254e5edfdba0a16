"""Slurm node lists: `gpu[01-03,07],cpu5` -> host names.

The sbatch templates expand `$SLURM_JOB_NODELIST` with `scontrol show hostnames` where Slurm's tools are on
PATH, else with this module (`python -m trajtune.launcher.slurm_nodes NODELIST` prints one host a line).
Grammar, as Slurm's hostlist writes it: items separated by top-level commas; an item is text with bracket
groups of comma-separated numbers or `lo-hi` ranges; the width of `lo` is the zero padding (`[08-10]` ->
08, 09, 10); several groups in one item multiply (`r[1-2]n[1-2]` -> r1n1, r1n2, r2n1, r2n2).
"""

from __future__ import annotations

import itertools
import re
import sys

from ..data_builders.errors import TrajtuneError

_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def _bad(nodelist: str, why: str) -> TrajtuneError:
    return TrajtuneError(f"node list {nodelist!r}: {why}; expected Slurm's form, e.g. gpu[01-03,07],cpu5")


def _expand_group(nodelist: str, group: str) -> list[str]:
    """`01-03,07` -> ['01', '02', '03', '07']."""
    out = []
    for part in group.split(","):
        m = _RANGE.fullmatch(part.strip())
        if not m:
            raise _bad(nodelist, f"[{group}] holds {part!r}, which is neither a number nor a lo-hi range")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise _bad(nodelist, f"range {part} runs backwards")
        out += [str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1)]
    return out


def _expand_item(nodelist: str, item: str) -> list[str]:
    """One host expression (no top-level comma) -> its hosts, bracket groups multiplied in order."""
    pieces: list[list[str]] = []
    rest = item
    while "[" in rest:
        head, _, tail = rest.partition("[")
        group, closed, rest = tail.partition("]")
        if not closed or "[" in group:
            raise _bad(nodelist, f"unbalanced brackets in {item!r}")
        pieces += [[head], _expand_group(nodelist, group)]
    if "]" in rest:
        raise _bad(nodelist, f"unbalanced brackets in {item!r}")
    pieces.append([rest])
    return ["".join(p) for p in itertools.product(*pieces)]


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed node list -> host names in order, e.g. 'gpu[01-02],cpu5' -> ['gpu01', 'gpu02', 'cpu5'].
    Raises TrajtuneError on a malformed list."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth < 0:
            raise _bad(nodelist, f"']' at character {i + 1} closes nothing")
        if ch == "," and depth == 0:
            items.append(nodelist[start:i])
            start = i + 1
    items.append(nodelist[start:])
    if depth:
        raise _bad(nodelist, "a '[' is never closed")
    hosts = [h for item in items if item.strip() for h in _expand_item(nodelist, item.strip())]
    if not hosts:
        raise _bad(nodelist, "no host in it")
    return hosts


def main(argv: list[str]) -> int:
    """`python -m trajtune.launcher.slurm_nodes NODELIST`: the hosts one a line; exit 2 with the reason on a
    malformed list."""
    if len(argv) != 1:
        print("usage: python -m trajtune.launcher.slurm_nodes NODELIST", file=sys.stderr)
        return 2
    try:
        sys.stdout.write("".join(h + "\n" for h in expand_nodelist(argv[0])))
    except TrajtuneError as e:
        print(f"trajtune slurm: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
