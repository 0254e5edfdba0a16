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
