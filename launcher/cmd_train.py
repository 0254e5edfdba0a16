"""`trajtune train`: SFT on a built dataset, as one process or under `deepspeed` / `torchrun`.

    trajtune train --config configs/train.yaml data=built/agent output_dir=runs/a lr=1e-5
    deepspeed --num_gpus 8 $(which trajtune) train --config configs/train.yaml
    torchrun --nproc-per-node 8 $(which trajtune) train --config configs/train.yaml

Ranks come from the launcher's environment (RANK / LOCAL_RANK / WORLD_SIZE); the `--local_rank` that deepspeed
passes is accepted and only fills LOCAL_RANK when the environment lacks it. `--keys` lists every config key.
Exit status: 0 done (or already trained), 2 bad input, 128 + the signal when a signal stopped the run with a
checkpoint (143 SIGTERM, 138 SIGUSR1, 130 Ctrl-C; also 130 when a second Ctrl-C aborted it without one).
torch, transformers and deepspeed are imported inside `run`, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config (e.g. configs/train.yaml); keys as listed by --keys.")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="Config overrides, e.g. lr=1e-5 micro_batch_size=2 lora.r=16.")
    parser.add_argument("--keys", action="store_true", help="List every config key with its default and help, exit.")


def run(args: argparse.Namespace) -> int:
    from ..trainer.config import TrainConfig
    from .config import describe, load_config

    if args.keys:
        for key, default, help_text in describe(TrainConfig):
            print(f"{key:<24} {default:<28} {help_text}")
        return 0
    cfg = load_config(TrainConfig, args.config, args.overrides)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"[trajtune rank {rank}] %(message)s")

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
        return 128 + result["signal"]
    if rank == 0:
        state = "already trained" if result["already_trained"] else "done"
        print(f"trajtune train: {state} at step {result['step']}; checkpoint {result['checkpoint']}")
    return 0
