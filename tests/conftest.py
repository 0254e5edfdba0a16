"""Shared test setup: DeepSpeed on CPU (gloo), no hub access, fixtures path."""

import os
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"
TEMPLATES = FIXTURES / "templates"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def converted_fixtures(tmp_path_factory) -> Path:
    """The public dataset fixtures converted once, through the CLI, to one canonical agent.jsonl (read-only)."""
    from trajtune.launcher.cli import main

    d = tmp_path_factory.mktemp("converted")
    inputs = sorted(str(p) for p in (FIXTURES / "datasets").glob("*.json*"))
    assert main(["convert", *inputs, "--from", "auto", "--out", str(d / "agent.jsonl"),
                 "--quarantine", str(d / "quarantine.jsonl")]) == 0
    return d / "agent.jsonl"


def read_records(path: Path) -> list[dict]:
    """The validated records of a canonical JSONL file (a fresh list each call: callers may change them)."""
    import json

    from trajtune.data_builders.trajectory import validate_record

    return [validate_record(json.loads(line)) for line in path.read_text().splitlines()]


def run_oracle(env, task) -> list[dict]:
    """The messages of one episode of `task` acted by the environment's own oracle, the loop of envs/base.py."""
    messages = env.reset(task)
    while not env.done:
        reply = env.oracle_act(messages)
        messages.append(reply)
        for call in reply.get("tool_calls") or []:
            messages.append(env.step(call))
        if not reply.get("tool_calls"):
            env.respond(reply)
    return messages
