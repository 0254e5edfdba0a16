"""The template battery as a measurement: every chat template x every conversation shape, graded by markers.

Renders each shape of `tests/template_battery.py` with trajtune's renderer (`render_with_mask`, with the CLI's
default `--prompt-format auto` and no other option, as a user meets it) on every template of
the corpus (`tests/templates/` and the 13 in `../shared/fixtures/templates/`) and grades each cell from the trained
tokens alone: correct, WRONG (a mask that trains the wrong text), declined (a RenderError, reason recorded) or
crashed. Two tokenizers: "bare" (built from the template alone, what `--template T.jinja` gives) and "model" (the
real model's bos/eos and turn tokens, for the families where the bare guess differs). Prints a table, the totals,
the decline reasons grouped, every WRONG cell, and the templates whose render drops untrained text.

    python bench/template_battery.py                     # both tokenizers, whole corpus
    python bench/template_battery.py --mode model --only gemma
    python bench/template_battery.py --json cells.json   # also write every cell
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import template_battery as tb  # noqa: E402  (the test helper: shapes and checker)

# Table codes for declines, by RenderError reason.
CODES = {"template_cannot_express": "cx", "template_error": "te", "not_prefix_stable": "ps", "mask_mismatch": "mm",
         "token_straddles_boundary": "st", "nothing_trained": "nt", "no_stop_token": "ns", "template_variable": "tv"}
SHORT = {"multi_turn_system": "multi", "single_call": "call", "parallel_calls": "parallel", "second_round": "2round",
         "loss_false": "untrained", "reasoning": "reason", "content_and_call": "text+call"}


def code(c: tb.Cell) -> str:
    return {"correct": "ok", "wrong": "WRONG", "crashed": "CRASH"}.get(c.verdict) or CODES.get(c.detail, "er")


def decline_group(c: tb.Cell) -> str:
    """The decline's message without the template name, message numbers and quoted texts: one line per cause."""
    msg = c.message.split(": ", 2)[-1] if c.message.startswith(c.detail) else c.message
    msg = re.sub(r"messages? \d+( and \d+)?", "message N", msg)
    cut = re.search(r"['\"]", msg)  # quoted texts (a repr of the turn, a name) differ per cell
    group = msg[:cut.start()] + "…" if cut else msg
    if " lacks " in msg:  # say what is lacking, by marker kind: RSNX (reasoning), ASTX (content), ...
        group += " lacks " + "/".join(sorted({re.sub(r"\d+$", "", m) for m in tb.MARKER_RE.findall(msg.split(" lacks ")[1])}))
    return f"{c.detail}: {group}"[:160]


def report(cells: list[tb.Cell], mode: str) -> None:
    shapes = list(tb.SHAPES)
    by: dict[str, dict[str, tb.Cell]] = {}
    for c in cells:
        by.setdefault(c.template, {})[c.shape] = c
    width = max(map(len, by)) + 2
    print(f"\n== tokenizer: {mode} ({len(by)} templates x {len(shapes)} shapes) ==")
    print(" " * width + " ".join(f"{SHORT[s]:>9s}" for s in shapes))
    for name, row in by.items():
        print(f"{name:<{width}s}" + " ".join(f"{code(row[s]):>9s}" for s in shapes))
    t = tb.totals(cells)
    n = len(cells)
    print(f"totals ({mode}): {n} cells: correct {t['correct']} ({t['correct'] / n:.0%}), wrong {t['wrong']}, "
          f"declined {t['declined']} ({t['declined'] / n:.0%}), crashed {t['crashed']}")
    print("declined by reason:")
    for reason, k in Counter(c.detail for c in cells if c.verdict == "declined").most_common():
        print(f"  {k:4d}  {reason}")
    print("declined by cause:")
    for cause, k in Counter(decline_group(c) for c in cells if c.verdict == "declined").most_common():
        print(f"  {k:4d}  {cause}")
    for c in cells:
        if c.verdict in ("wrong", "crashed"):
            print(f"{c.verdict.upper()}: {c.template} / {c.shape}: {c.detail} {c.message[:200]}")
    lost = {name: sorted({m for c in row.values() for m in c.lost}) for name, row in by.items()}
    for name, markers in lost.items():
        if markers:
            print(f"render drops untrained text: {name}: {', '.join(markers)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["bare", "model", "both"], default="both", help="which tokenizer(s)")
    ap.add_argument("--only", default="", help="only templates whose name contains this text")
    ap.add_argument("--json", default=None, help="write every cell (asdict) to this file")
    ap.add_argument("--turns", choices=["joint", "auto", "per-turn"], default="auto",
                    help="auto (what trajtune build trains) / per-turn: the build's samples (render_samples); joint: "
                         "render_with_mask alone")
    args = ap.parse_args()

    paths = [p for p in tb.corpus_paths() if args.only in p.stem]
    modes = ["bare", "model"] if args.mode == "both" else [args.mode]
    out = {}
    for mode in modes:
        t0 = time.perf_counter()
        cells = tb.measure(paths, mode, turns=args.turns)
        report(cells, mode)
        print(f"({mode}: {len(cells)} cells in {time.perf_counter() - t0:.1f} s)")
        out[mode] = [asdict(c) for c in cells]
    if args.json:
        Path(args.json).write_text(json.dumps(out, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
