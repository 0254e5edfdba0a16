"""The CLI surface: `trajtune --version`, every subcommand's options frozen, and every default shown in `--help`.

Adding an option means adding it to SURFACE below: the surface cannot sprawl unnoticed.
"""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest
from conftest import ROOT

import trajtune
from trajtune.data_builders.build import BuildConfig
from trajtune.launcher.cli import COMMANDS, main, make_parser

# subcommand -> {option (or positional dest): argparse default}
SURFACE = {
    "convert": {"inputs": None, "--from": "auto", "--out": None, "--quarantine": None, "--strict": False,
                "--tools": None},
    "render": {"--data": None, "--tokenizer": None, "--template": None, "--prompt-format": "auto",
               "--template-kwargs": None, "--call-syntax": None, "--reasoning": "auto", "--call-content": None,
               "--index": None, "--json": False, "--check-template": None},
    "build": {"--data": None, "--config": None, "--tokenizer": None, "--template": None, "--prompt-format": None,
              "--template-kwargs": None, "--call-syntax": None, "--reasoning": None, "--call-content": None,
              "--turns": None,
              "--seq-len": None, "--overlong": None, "--dedup": None, "--decontam": None, "--decontam-n": None,
              "--out": None, "--val-fraction": None, "--seed": None, "--num-proc": None, "--cache-dir": None},
    "train": {"--config": None, "overrides": None, "--keys": False, "--dry-run": False, "--nodes": None,
              "--gpus-per-node": None},
    "export": {"--checkpoint": None, "--out": None, "--merge": False, "--dtype": "bf16", "--model": None},
    "tiny-model": {"--tokenizer": None, "--out": None, "--hidden": 64, "--layers": 2, "--heads": 4,
                   "--max-positions": 4096, "--seed": 0},
    "env": {"env_command": None},  # `env tasks` / `env run`: their options are pinned by tests/test_env_cli.py
    "synth": {"--env": None, "--tasks": None, "--policy": "oracle", "--served-model": None, "--api-key-env": None,
              "--paraphrase": None, "--n": None,
              "--split": "held_in", "--seed": 0, "--max-turns": 20, "--shard": None, "--workers": 1, "--out": None,
              "--rejects": None, "action": None},
    "filter": {"--data": None, "--out": None, "--rejects": None, "--min-reward": 1.0, "--tokenizer": None,
               "--template": None, "--prompt-format": None, "--seq-len": None, "--dedup": "exact", "--decontam": [],
               "--decontam-n": 13},
    "slurm": {"action": None},
    "slurm submit": {"--template": None, "--nodes": 1, "--gpus-per-node": None, "--array": None, "--launcher": None,
                     "--signal-lead": None, "--max-requeues": None, "--partition": None, "--account": None,
                     "--time": None, "--run-dir": None, "--dry-run": False, "job_command": None},
    "slurm status": {"run_dir": None, "--lines": 3},
}


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    """The parser of `name`, or of a nested action such as "slurm submit"."""
    parser, _ = make_parser(name.split()[:1])
    for part in name.split():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[part]
    return parser


def shown_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """option -> its help text exactly as `--help` prints it (before line wrapping)."""
    formatter = parser._get_formatter()
    return {(a.option_strings or [a.dest])[-1]: formatter._expand_help(a)
            for a in parser._actions if a.dest != "help" and a.help}


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"trajtune {trajtune.__version__}\n" == "trajtune 0.1.0\n"
    assert re.search(r'version="([^"]+)"', (ROOT / "setup.py").read_text()).group(1) == trajtune.__version__


@pytest.mark.parametrize("name", [*COMMANDS, "slurm submit", "slurm status"])
def test_every_option_is_frozen_and_shows_its_default(name):
    parser = subcommand_parser(name)
    actions = [a for a in parser._actions if a.dest != "help"]
    assert {(a.option_strings or [a.dest])[-1]: a.default for a in actions} == SURFACE[name]
    helps = shown_help(parser)
    for option, default in SURFACE[name].items():
        if default is not None and default is not False:
            assert f"(default: {default})" in helps[option], (name, option, helps[option])


def test_build_flags_show_the_build_configs_defaults():
    # build's flags default to None (a --config file must not be overridden); the help shows BuildConfig's.
    helps = shown_help(subcommand_parser("build"))
    for f in dataclasses.fields(BuildConfig):
        default = f.default
        if default is dataclasses.MISSING or default is None or default == "":
            continue
        assert f"(default: {default})" in helps["--" + f.name.replace("_", "-")], f.name


def test_help_output_carries_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--dtype {bf16,fp16,fp32} Dtype of the saved weights. (default: bf16)" in out
    with pytest.raises(SystemExit):
        main(["tiny-model", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--hidden HIDDEN Hidden size. (default: 64)" in out and "(default: 4096)" in out
