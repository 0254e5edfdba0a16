"""Where a model or tokenizer named on the command line lives: a local directory, else the Hugging Face cache.

`resolve_pretrained(name, what)` is the one place `--tokenizer`, `model=` and friends are turned into a directory
that `from_pretrained` reads. A hub id (`Qwen/Qwen2.5-7B-Instruct`) looks like a relative path, so a local
directory of that name wins; otherwise the id is looked up in the cache (`HF_HUB_CACHE`, `HF_HOME/hub`), offline.
Nothing is downloaded here: a run's ranks must all read the same files, and a half-downloaded model mid-run helps
no one. When neither place has it, the error says both places it looked and how to fetch the model once.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from .errors import TrajtuneError


def resolve_pretrained(name: str | Path, what: str = "model") -> str:
    """The directory holding `name`: the local directory `name` if there is one, else the cached snapshot of the
    hub id `name` (revision `main`). Raises TrajtuneError naming the local path and the cache dir it tried.

    `what` names the thing in messages ("model", "tokenizer"). Example: `resolve_pretrained("org/tiny")` ->
    `~/.cache/huggingface/hub/models--org--tiny/snapshots/<commit>`.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError

    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.is_file():
        raise TrajtuneError(f"{what} {str(name)!r}: is a file; give the directory that holds it ({path.parent})")
    cache = constants.HF_HUB_CACHE
    try:
        return snapshot_download(str(name), local_files_only=True)
    except HFValidationError:  # ./x, /abs/x, a/b/c: only ever a path
        in_cache = f"it is not a hub id (org/name) to look up in the Hugging Face cache {cache}"
        fix = "fix the path"
    except OSError:  # LocalEntryNotFoundError: no snapshot of it in the cache
        in_cache = f"no snapshot of it in the Hugging Face cache {cache} (models--{str(name).replace('/', '--')})"
        fix = f"fix the path, or fetch it once with `hf download {name}` (HF_HUB_CACHE selects another cache)"
    raise TrajtuneError(
        f"{what} {str(name)!r} not found: no local directory {path.absolute()}{_close_sibling(path)}, and {in_cache}. "
        f"Nothing is downloaded here (trajtune reads models and tokenizers offline, as with HF_HUB_OFFLINE=1): {fix}")


def _close_sibling(path: Path) -> str:
    """' (did you mean X?)' for an existing entry next to a mistyped path, else ''."""
    parent = path.parent
    if not parent.is_dir():
        return ""
    close = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir()], n=1)
    return f" (did you mean {parent / close[0]}?)" if close else ""
