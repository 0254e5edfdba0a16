"""`trajtune train`: SFT on a built dataset, as one process or under `deepspeed` / `torchrun`.

    trajtune train --config configs/train.yaml data=built/agent output_dir=runs/a lr=1e-5
    deepspeed --num_gpus 8 $(which trajtune) train --config configs/train.yaml
    torchrun --nproc-per-node 8 $(which trajtune) train --config configs/train.yaml

Ranks come from the launcher's environment (RANK / LOCAL_RANK / WORLD_SIZE); the `--local_rank` that deepspeed
passes is accepted and only fills LOCAL_RANK when the environment lacks it. `--keys` lists every config key.
torch, transformers and deepspeed are imported inside `run`, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
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

    from ..trainer.loop import train

    result = train(cfg)
    if rank == 0:
        state = "stopped early (resume with resume=auto)" if result["stopped"] else "done"
        print(f"trajtune train: {state} at step {result['step']}; checkpoint {result['checkpoint']}")
    return 0
