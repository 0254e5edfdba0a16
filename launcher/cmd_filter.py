"""`trajtune filter`: staged checks of trajectories (format -> execution -> semantic -> decontam -> length -> dedup).

    trajtune filter --data synth.jsonl --out kept.jsonl --rejects rejected.jsonl [--min-reward 1.0]
                    [--template qwen2.5-instruct.jinja --seq-len 4096] [--dedup exact|near|none] [--decontam EVAL...]

Every record is kept (normalised) or written to --rejects as {"file", "line", "id", "stage", "reason", "detail",
"raw"}; OUT.manifest.json counts records in and out of each stage, per reason. Length, dedup and decontamination use
the functions `trajtune build` uses. The stages are data_builders/synth_filters.py.
"""

from __future__ import annotations

import argparse


def min_reward(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Inputs and outputs
    p.add_argument("--data", action="append", required=True, metavar="FILE.jsonl", help="trajectories (repeatable)")
    p.add_argument("--out", required=True, metavar="FILE.jsonl", help="kept trajectories")
    p.add_argument("--rejects", metavar="FILE.jsonl", help="rejected ones with stage and reason (default OUT.rejects.jsonl)")
    # Stages
    p.add_argument("--min-reward", type=min_reward, default=1.0,
                   help="semantic stage: keep meta.reward >= this (none: skip the stage)")
    p.add_argument("--tokenizer", metavar="DIR", help="length stage: the model's tokenizer")
    p.add_argument("--template", metavar="FILE.jinja", help="length stage: chat template (alone: a byte-level tokenizer)")
    p.add_argument("--prompt-format", help="tool prompt format, for templates that cannot show tools themselves")
    p.add_argument("--seq-len", type=int, help="length stage: most tokens a rendered trajectory may have")
    p.add_argument("--dedup", choices=["exact", "near", "none"], default="exact", help="duplicate removal")
    p.add_argument("--decontam", nargs="+", default=[], metavar="FILE", help="eval files (JSON/JSONL) to remove overlaps with")
    p.add_argument("--decontam-n", type=int, default=13, help="word n-gram length for decontamination")


def run(args: argparse.Namespace) -> int:
    from ..data_builders.synth_filters import FilterConfig, filter_trajectories

    cfg = FilterConfig(data=args.data, out=args.out, rejects=args.rejects, min_reward=args.min_reward,
                       tokenizer=args.tokenizer, template=args.template, prompt_format=args.prompt_format,
                       seq_len=args.seq_len, dedup=args.dedup, decontam=args.decontam, decontam_n=args.decontam_n)
    m = filter_trajectories(cfg)
    print(f"filter: {m['records_in']} in = {m['kept']} kept + {m['rejected']} rejected")
    for s in m["stages"]:
        if s["skipped"]:
            print(f"  {s['stage']:<10} skipped")
            continue
        reasons = ", ".join(f"{r} {n}" for r, n in s["rejected"].items())
        print(f"  {s['stage']:<10} {s['in']} -> {s['kept']}" + (f" ({reasons})" if reasons else ""))
    print(f"filter: wrote {m['out']}, rejects {m['rejects']}, manifest beside")
    return 0
