"""The `trajtune` command line: one console script, one subcommand per stage.

Each subcommand lives in its own module `trajtune.launcher.cmd_<name>` with `add_arguments(parser)` and
`run(args) -> int`. Only the chosen command's module is imported, and those import torch, transformers
or deepspeed inside `run`, so `trajtune --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__

# name -> (module, one-line help). Later stages add their rows here.
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("trajtune.launcher.cmd_convert", "Convert public datasets into canonical trajectories (JSONL)."),
    "render": ("trajtune.launcher.cmd_render", "Render trajectories with a chat template and show what is trained."),
    "build": ("trajtune.launcher.cmd_build", "Tokenize, filter, pack and mix trajectories into a training dataset."),
    "train": ("trajtune.launcher.cmd_train", "Train (SFT) on a built dataset: one process, deepspeed or torchrun."),
    "export": ("trajtune.launcher.cmd_export", "Export a checkpoint as a Hugging Face model (safetensors)."),
    "tiny-model": ("trajtune.launcher.cmd_tiny_model", "Write a small random model for a CPU quick start."),
    "env": ("trajtune.launcher.cmd_env", "List an environment's tasks, or run tool calls on one and see the reward."),
    "synth": ("trajtune.launcher.cmd_synth", "Synthesize trajectories: a policy acts on an environment's tasks."),
    "filter": ("trajtune.launcher.cmd_filter", "Filter trajectories in stages (format, execution, reward, length, dedup)."),
    "slurm": ("trajtune.launcher.cmd_slurm", "Submit a trajtune command to Slurm from a template; show a run's jobs."),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; every option that has a default (not None or False) ends its help
    with `(default: X)`, unless the help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return text
        return text if "(default" in text else f"{text} (default: %(default)s)"


def make_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    """The parser with every subcommand; only the one named in `argv` gets its arguments (and its module, returned)."""
    parser = argparse.ArgumentParser(
        prog="trajtune",
        description="Turn open LLMs into tool-calling agents: convert, render, build, train.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"trajtune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
    return parser, module


def _take_local_rank(argv: list[str]) -> list[str]:
    """The deepspeed launcher puts `--local_rank=N` before the subcommand; move it to LOCAL_RANK (what ranks read)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
        elif arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            os.environ.setdefault("LOCAL_RANK", argv[i + 1])
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _take_local_rank(sys.argv[1:] if argv is None else argv)
    parser, module = make_parser(argv)
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 2
    from ..data_builders.errors import TrajtuneError

    try:
        return int(module.run(args) or 0)
    except TrajtuneError as e:
        print(f"trajtune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error. Point stdout at devnull so the
        # interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
