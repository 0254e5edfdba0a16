"""`trajtune train`: SFT on a built dataset, as one process or under `deepspeed` / `torchrun`.

    trajtune train --config configs/train.yaml data=built/agent output_dir=runs/a lr=1e-5
    deepspeed --num_gpus 8 --module trajtune.launcher.cli train --config configs/train.yaml
    torchrun --standalone --nproc-per-node 8 -m trajtune.launcher.cli train --config configs/train.yaml
    trajtune train --dry-run --nodes 4 --gpus-per-node 8 --config configs/train.yaml   # see before you launch

Ranks come from the launcher's environment (RANK / LOCAL_RANK / WORLD_SIZE); the `--local_rank` that deepspeed
passes is accepted and only fills LOCAL_RANK when the environment lacks it. `--keys` lists every config key.
`--dry-run` prints the resolved config, the batch arithmetic, the DeepSpeed JSON and the launcher command lines
for a shape, loading neither torch nor a model; it starts nothing (training starts only as above).
Console: rank 0's log lines; other ranks print errors only (every rank's full log is output_dir/logs/rank_K.log).
Exit status: 0 done (or already trained, or a dry run), 2 bad input (or a shape the config cannot run on),
128 + the signal when a signal stopped the run with a checkpoint (143 SIGTERM, 138 SIGUSR1, 130 Ctrl-C; also 130
when a second Ctrl-C aborted it without one). torch, transformers and deepspeed are imported inside `run`, so
`--help` and `--dry-run` are instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Any

from ..data_builders.errors import TrajtuneError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config (e.g. configs/train.yaml); keys as listed by --keys.")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="Config overrides, e.g. lr=1e-5 micro_batch_size=2 lora.r=16.")
    parser.add_argument("--keys", action="store_true", help="List every config key with its default and help, exit.")
    # See before you launch
    parser.add_argument("--dry-run", action="store_true",
                        help="Print the resolved config, batch arithmetic, DeepSpeed JSON and the deepspeed / torchrun "
                             "/ srun command lines for --nodes × --gpus-per-node ranks, then exit (nothing is loaded; "
                             "exit 2 naming the fix when the config cannot run on that shape).")
    parser.add_argument("--nodes", type=int, help="Nodes of the --dry-run shape (default: 1).")
    parser.add_argument("--gpus-per-node", type=int, help="GPUs (one rank each) per node of the --dry-run shape "
                                                          "(default: 1).")


def run(args: argparse.Namespace) -> int:
    from ..trainer.config import TrainConfig
    from .config import describe, load_config

    if args.keys:
        for key, default, help_text in describe(TrainConfig):
            print(f"{key:<24} {default:<28} {help_text}")
        return 0
    if not args.dry_run and (args.nodes is not None or args.gpus_per_node is not None):
        raise TrajtuneError("--nodes and --gpus-per-node shape a --dry-run only; start training with one of the "
                            "command lines it prints (deepspeed, torchrun or srun run `trajtune train` on every rank)")
    cfg = load_config(TrainConfig, args.config, args.overrides)
    if args.dry_run:
        train_args = (["--config", args.config] if args.config else []) + list(args.overrides)
        print(dry_run(cfg, train_args, 1 if args.nodes is None else args.nodes,
                      1 if args.gpus_per_node is None else args.gpus_per_node))
        return 0
    rank = int(os.environ.get("RANK", 0))
    console = logging.StreamHandler(sys.stderr)
    # Rank 0 tells the story; the others say only what went wrong (all of each rank is in logs/rank_K.log).
    console.setLevel(logging.INFO if rank == 0 else logging.ERROR)
    console.setFormatter(logging.Formatter(f"[trajtune rank {rank}] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[console])

    from ..trainer.checkpoint import latest_checkpoint
    from ..trainer.loop import train

    try:
        result = train(cfg)
    except KeyboardInterrupt:  # Ctrl-C before the first step, or a second one during a step
        if rank == 0:
            print(f"trajtune train: aborted by Ctrl-C; latest checkpoint: {latest_checkpoint(cfg.output_dir)}",
                  file=sys.stderr)
        return 128 + signal.SIGINT
    if result["stopped"]:  # the loop said how to resume; 128 + signal, as a shell reports a process it killed
        return _leave(128 + result["signal"])
    if rank == 0:
        state = "already trained" if result["already_trained"] else "done"
        print(f"trajtune train: {state} at step {result['step']}; checkpoint {result['checkpoint']}")
    return _leave(0)


def _leave(code: int) -> int:
    """`code`, and for a rank of a multi-process run, exit at once with it once everything is flushed.

    The run is finished and its files are closed (checkpoint, export, metrics, logs) by now; what remains is the
    interpreter's teardown, where C++ threads of the distributed runtime are sometimes destroyed while joinable
    and the process aborts ("terminate called without an active exception", exit 250). A launcher or Slurm then
    reports a finished run as failed (seen once in ~20 two-rank runs), so a rank skips that teardown."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def dry_run(cfg: Any, train_args: list[str], nodes: int, gpus_per_node: int) -> str:
    """What `trajtune train` would run on nodes × gpus_per_node ranks (one per GPU), as text: the resolved config,
    the batch arithmetic, the DeepSpeed config and the launcher command lines (each rank running `trajtune train
    TRAIN_ARGS`). Raises TrajtuneError, naming the fix, when the config cannot run on that shape. No torch."""
    import yaml

    from ..trainer.ds_config import build_ds_config
    from . import launch_commands as lc
    from .config import to_dict

    world = lc.check_shape(nodes, gpus_per_node)
    cfg.check()
    engine = cfg.resolve_engine(world, has_gpu=True)  # the shape is GPUs: engine=auto means DeepSpeed
    accumulation = cfg.accumulation_steps(world)
    steps = (f"max_steps={cfg.max_steps}" if cfg.max_steps else
             f"epochs={cfg.epochs:g} × the dataset's packs / {cfg.global_batch_size} (counted when training starts)")
    out = [f"# trajtune train --dry-run: {nodes} node(s) × {gpus_per_node} GPU(s) = world size {world}", "",
           "## Resolved config", yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(), "",
           "## Batch",
           f"micro_batch_size {cfg.micro_batch_size} × accumulation {accumulation} × world size {world} = "
           f"global_batch_size {cfg.global_batch_size} packs per optimizer step",
           f"steps: {steps}", f"engine: {engine}", ""]
    if engine == "deepspeed":
        ds = build_ds_config(cfg.ds_config, cfg, accumulation, world)
        out += [f"## DeepSpeed config ({cfg.ds_config} + the run config)", json.dumps(ds, indent=2), ""]
    out += ["## Launch", *launch_lines(train_args, nodes, gpus_per_node)]
    return "\n".join(out)


def launch_lines(train_args: list[str], nodes: int, gpus_per_node: int) -> list[str]:
    """The command lines that start this shape, each after a `#` line saying where it runs."""
    from . import launch_commands as lc

    shape = {"nodes": nodes, "gpus_per_node": gpus_per_node}
    srun = lc.srun_command(lc.torchrun_command(train_args, **shape, rdzv_host=lc.SLURM_FIRST_HOST,
                                               rdzv_id=lc.SLURM_JOB_ID), nodes=nodes)
    slurm = [f"# Slurm, inside an allocation of {nodes} node(s) (sbatch / salloc): one task per node running torchrun",
             lc.shell_line(srun)]
    if nodes == 1:
        plain = ["# one process, no launcher", lc.shell_line(["trajtune", "train", *train_args])] \
            if gpus_per_node == 1 else []
        return [*plain,
                "# deepspeed, on the node", lc.shell_line(lc.deepspeed_command(train_args, **shape)),
                "# torchrun, on the node", lc.shell_line(lc.torchrun_command(train_args, **shape)),
                *slurm]
    return [f"# MASTER_ADDR: the first node's hostname; hostfile: one line per node, `HOSTNAME slots={gpus_per_node}`, "
            "the first node first",
            "# deepspeed, once on the first node (it starts the others over ssh / pdsh)",
            lc.shell_line(lc.deepspeed_command(train_args, **shape)),
            f"# deepspeed without ssh, on every node with NODE_RANK=0..{nodes - 1}",
            lc.shell_line(lc.deepspeed_command(train_args, **shape, node_rank=lc.NODE_RANK)),
            "# torchrun, on every node (c10d rendezvous on the first node)",
            lc.shell_line(lc.torchrun_command(train_args, **shape, rdzv_host=lc.MASTER_ADDR)),
            *slurm]
