"""`trajtune build`: tokenize, filter, pack and mix canonical trajectories into a training dataset.

Flags map one to one onto `BuildConfig` (data_builders/build.py); a `--config build.yaml` gives the same keys,
and flags given on the command line win over it. The pipeline itself lives in `data_builders/build.py`.
"""

from __future__ import annotations

import argparse
import json

SOURCES_HELP = """\
Source syntax (repeat --data for several files):
  PATH:WEIGHT   WEIGHT is the source's share of the build's *trained tokens*, e.g. --data agent.jsonl:0.2
                --data general.jsonl:0.8. With only weighted sources, weights are normalised and the build is
                the largest mix that needs no up-sampling (the scarcest source is used once, others down-sampled).
  PATH:xE       exactly E epochs of the source (E may be fractional: x0.5, x2). Mixed with weighted sources,
                the weights are fractions of the total (they must then sum to < 1): agent.jsonl:x1
                general.jsonl:0.8 keeps all agent data and adds 4x as many trained tokens of general data.
  PATH          the same as PATH:x1.
Sampling is deterministic from --seed. Output: OUT/manifest.json, OUT/tokenizer/, OUT/train/ (one row per
pack: input_ids, labels, position_ids, seq_lens), OUT/validation/ (with --val-fraction), OUT/dropped.jsonl."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..data_builders.build import BuildConfig

    # Flags default to None so that a --config file's values stand unless a flag is given; the defaults shown
    # are BuildConfig's (numpy and xxhash only: --help stays instant).
    d = BuildConfig()
    p.epilog = SOURCES_HELP
    # Inputs
    p.add_argument("--data", action="append", metavar="PATH[:WEIGHT|:xE]", help="a source of canonical trajectories (JSONL)")
    p.add_argument("--config", help="YAML file with the same keys as the flags (data, seq_len, ...)")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (the model's, or OUT/tokenizer of a build), "
                   "or a hub id in the Hugging Face cache")
    p.add_argument("--template", metavar="FILE.jinja", help="chat template; alone: a byte-level tokenizer for it")
    from .cmd_render import add_render_options

    add_render_options(p, default_prompt_format=None)  # --prompt-format, --template-kwargs, --call-syntax, ...
    p.add_argument("--turns", choices=["auto", "joint", "per-turn"],
                   help="per-turn: one sample per trained assistant turn, its context the generation prompt before it "
                        "(templates that render history differently); joint: one per record; auto: joint where the "
                        f"template is prefix-stable, else per-turn (default: {d.turns})")
    # Shape
    p.add_argument("--seq-len", type=int, help=f"tokens per pack (default: {d.seq_len})")
    p.add_argument("--overlong", choices=["drop", "truncate"],
                   help=f"sample longer than seq-len: drop, or truncate after its last trained message that fits "
                        f"(default: {d.overlong})")
    # Filters
    p.add_argument("--dedup", choices=["exact", "near", "none"], help=f"duplicate removal (default: {d.dedup})")
    p.add_argument("--decontam", nargs="+", metavar="FILE", help="eval files (JSON/JSONL) to remove overlaps with")
    p.add_argument("--decontam-n", type=int, help=f"word n-gram length for decontamination (default: {d.decontam_n})")
    # Output
    p.add_argument("--out", metavar="DIR", help="output directory")
    p.add_argument("--val-fraction", type=float,
                   help=f"fraction of each source's records held out (default: {d.val_fraction})")
    p.add_argument("--seed", type=int, help=f"seed of sampling, split and pack order (default: {d.seed})")
    # Runtime
    p.add_argument("--num-proc", type=int, help=f"processes for rendering (default: {d.num_proc})")
    p.add_argument("--cache-dir", help="datasets cache directory (default: Hugging Face's)")


def run(args: argparse.Namespace) -> int:
    from ..data_builders.build import BuildConfig, build
    from .config import load_config

    overrides = []
    for key in ("data", "tokenizer", "template", "prompt_format", "template_kwargs", "call_syntax", "reasoning",
                "call_content", "turns", "seq_len", "overlong", "dedup", "decontam", "decontam_n", "out", "val_fraction",
                "seed", "num_proc", "cache_dir"):
        value = getattr(args, key)
        if value is not None:
            # JSON is valid YAML: lists and paths with odd characters survive the key=value round trip.
            overrides.append(f"{key}={json.dumps(value)}")
    cfg = load_config(BuildConfig, args.config, overrides)
    manifest = build(cfg)
    train = manifest["train"]
    print(f"build: {manifest['records_in']} records in, {manifest['kept']} kept, {manifest['dropped']} dropped "
          f"{manifest['dropped_by_reason'] or ''}, {manifest['truncated']} truncated")
    turns = manifest["turns"]
    if turns["per_turn_records"]:
        print(f"  per-turn: {turns['per_turn_records']} records -> {turns['per_turn_samples']} samples, "
              f"{turns['extra_context_tokens']} context tokens repeated"
              + (f" (the template renders history differently: --turns auto chose {turns['template']})"
                 if turns["template"] == "per-turn" else ""))
    for src in manifest["sources"]:
        print(f"  {src['spec']}: {src['sampled_records']} samples, {src['sampled_trained_tokens']} trained tokens, "
              f"mixture {src['effective_mixture']:.3f}, {src['effective_epochs']:.2f} epochs")
    print(f"build: {train['packs']} packs, {train['total_tokens']} tokens ({train['trained_tokens']} trained), "
          f"efficiency {train['packing_efficiency']:.4f} (L2 bound {train['efficiency_upper_bound']:.4f}) -> {cfg.out}")
    return 0
