"""`trajtune synth`: run a policy on an environment's tasks and write canonical trajectories (JSONL).

    trajtune synth --env sql --tasks dev.jsonl --policy oracle --n 1000 --split held_in --seed 0 --out data/sql.jsonl
    trajtune synth --env sql ... --shard $SLURM_ARRAY_TASK_ID/8 --out data/sql.$SLURM_ARRAY_TASK_ID.jsonl
    trajtune synth merge data/sql.jsonl data/sql.*.jsonl

Every task ends in --out (a trajectory with meta.reward) or in --rejects (unsolvable or error, with the cause);
OUT.summary.json has the counts. Running the same command again resumes. The pipeline is data_builders/synth.py.
Exit status: 0, 1 when some tasks failed with an error (listed in --rejects; a re-run retries them), 2 for a
usage problem.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = "Merge shards: trajtune synth merge OUT SHARD.jsonl... (one line per task id, sorted by id)"
    # What to run
    p.add_argument("--env", help="environment: sql, shell, apis, seal_tools, or MODULE:CLASS")
    p.add_argument("--tasks", metavar="FILE", help="the environment's tasks file (e.g. AgentBench DB tasks for sql)")
    p.add_argument("--policy", default="oracle", help="oracle, random, openai:URL or hf:PATH")
    p.add_argument("--served-model", help="openai: policies: the model name the endpoint serves (default: its only one)")
    p.add_argument("--api-key-env", metavar="VAR", help="openai: policies: the environment variable holding the API key")
    p.add_argument("--paraphrase", metavar="POLICY", help="rewrite each instruction with this policy first (openai:URL)")
    p.add_argument("--n", type=int, help="the first N tasks (default all), before --shard")
    p.add_argument("--split", default="held_in", choices=["held_in", "held_out", "all"], help="task split")
    p.add_argument("--seed", type=int, default=0, help="seed of the task list and of every rollout")
    p.add_argument("--max-turns", type=int, default=20, help="policy turns per episode")
    # Scale
    p.add_argument("--shard", metavar="I/N", help="run only shard I of N (tasks by a stable hash of their id)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes, each with its own env and policy")
    # Output
    p.add_argument("--out", metavar="FILE.jsonl", help="trajectories (appended to: a re-run resumes)")
    p.add_argument("--rejects", metavar="FILE.jsonl", help="tasks without a trajectory and why (default OUT.rejects.jsonl)")
    sub = p.add_subparsers(dest="action", metavar="merge")
    m = sub.add_parser("merge", help="join shard outputs into one file", description="Join shard outputs: one "
                       "trajectory per task id (the first shard given wins), sorted by id; rejects and summary too.")
    m.add_argument("merged", metavar="OUT", help="merged trajectories JSONL")
    m.add_argument("shards", nargs="+", metavar="SHARD", help="shard outputs (their .rejects/.summary files beside)")


def run(args: argparse.Namespace) -> int:
    from ..data_builders.errors import TrajtuneError
    from ..data_builders.synth import SynthConfig, merge, synthesize

    if args.action == "merge":
        s = merge(args.merged, args.shards)
        print(f"synth merge: {len(args.shards)} shards -> {s['trajectories']} trajectories, {s['rejected']} rejected"
              + (f", {s['missing']} of {s['tasks']} tasks missing" if s["missing"] else "") + f" -> {args.merged}")
        return 0
    if not args.env or not args.out:
        raise TrajtuneError("give --env ENV and --out FILE.jsonl (or: trajtune synth merge OUT SHARD...)")
    cfg = SynthConfig(env=args.env, out=args.out, tasks=args.tasks, policy=args.policy, n=args.n,
                      split=None if args.split == "all" else args.split, seed=args.seed, max_turns=args.max_turns,
                      paraphrase=args.paraphrase, shard=args.shard, workers=args.workers, rejects=args.rejects,
                      served_model=args.served_model, api_key_env=args.api_key_env)
    s = synthesize(cfg)
    rejected = ", ".join(f"{k} {v}" for k, v in {**s["unsolvable_by_reason"], **s["errors_by_type"]}.items())
    print(f"synth: {s['tasks']} tasks, ran {s['ran']} in {s['seconds']:.1f}s ({s['tasks_per_second']:.1f}/s): "
          f"{s['trajectories']} trajectories, {s['solved']} solved, rewards {s['reward_histogram']}; "
          f"{s['rejected']} rejected {s['rejected_by_reason'] or ''}" + (f" ({rejected})" if rejected else "")
          + (f"; {s['missing']} missing" if s["missing"] else ""))
    print(f"synth: wrote {s['out']}, rejects {s['rejects']}, summary beside")
    errors = s["rejected_by_reason"].get("error", 0)
    if errors:
        print(f"synth: {errors} tasks failed with an error (see {s['rejects']}); run the same command again to retry them")
    return 1 if errors else 0
