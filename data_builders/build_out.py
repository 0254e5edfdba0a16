"""The build's output directory: what `--out` may replace, and putting a finished build in its place.

A build is written beside OUT (`OUT.partial`) and moved in only when complete, so an interrupted or failed build
leaves the previous dataset whole and a trainer never reads half of a new one; a directory that is not a trajtune
build is never replaced.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .errors import TrajtuneError


def previous_build(out: Path) -> dict[str, Any] | None:
    """The manifest of the trajtune build in OUT, None if OUT is absent or empty; TrajtuneError if OUT is something
    else, which a build would destroy."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise TrajtuneError(f"--out {out} is a file; give a directory for the built dataset")
    manifest = out / "manifest.json"
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text())
        except (OSError, ValueError):
            previous = None
        if isinstance(previous, dict) and "build_key" in previous and "format_version" in previous:
            return previous
    if next(out.iterdir(), None) is None:
        return None
    raise TrajtuneError(f"--out {out} exists and is not a trajtune build directory (it has no manifest.json written "
                        "by `trajtune build`); the build would replace everything in it. Give a new directory, or "
                        "remove this one first")


def replace_dir(new: Path, old: Path) -> None:
    """Move the finished build `new` to `old`, replacing what is there: two renames, never a half-written OUT."""
    if old.exists():
        trash = old.with_name(old.name + ".old")
        shutil.rmtree(trash, ignore_errors=True)
        old.rename(trash)
        new.rename(old)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        old.parent.mkdir(parents=True, exist_ok=True)
        new.rename(old)
