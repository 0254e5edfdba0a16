"""Atomic checkpoints with keep-last rotation, and finding the one to resume from.

Layout under a run's output_dir:
```
checkpoints/step_00000100/   engine state (engine/ for DeepSpeed shards, model.pt + optimizer.pt for torch),
                             rng_rank{R}.pt per rank, trainer_state.json (step, data position, run facts)
checkpoints/latest           the name of the newest complete checkpoint, written last
checkpoints/.tmp-step_...    a save in progress (never resumed from; removed by the next save)
```
A save writes everything into the `.tmp-` folder, then rank 0 renames it and only then rewrites `latest`
(write-then-`os.replace`), so a crash at any moment leaves the previous checkpoint as latest.
The data position is the optimizer step: the data order is a pure function of (seed, step), see trainer/data.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from ..data_builders.errors import TrajtuneError

LATEST = "latest"


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint `latest` points to, or None when the run has none yet."""
    root = checkpoints_dir(output_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    target = root / pointer.read_text().strip()
    if not (target / "trainer_state.json").is_file():
        raise TrajtuneError(f"{pointer} names {target.name}, which is missing or incomplete; point it at an existing "
                            f"checkpoint in {root} or pass resume=none to start over")
    return target


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint, a `checkpoints/` folder or an output_dir (the latter two: latest)."""
    path = Path(path)
    if (path / "trainer_state.json").is_file():
        return path
    output_dir = path.parent if path.name == "checkpoints" else path
    found = latest_checkpoint(output_dir) if (checkpoints_dir(output_dir) / LATEST).is_file() else None
    if found is not None:
        return found
    raise TrajtuneError(f"{path}: not a trajtune checkpoint (no trainer_state.json) nor a run directory with "
                        "checkpoints/latest")


def find_resume(resume: str, output_dir: str | Path) -> Path | None:
    """resume=none -> None; auto -> latest in output_dir or None; anything else must be a checkpoint."""
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    return resolve_checkpoint(resume)


def read_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json: step, bad_steps and the run facts `check_resumable` compares."""
    return json.loads((checkpoint / "trainer_state.json").read_text())


def check_resumable(checkpoint: Path, state: dict[str, Any], run: dict[str, Any]) -> None:
    """Raise TrajtuneError, before any weight is loaded, when this run cannot continue `checkpoint`'s.

    run: this run's global_batch_size, seed, data_sha256 (the data order depends on them), world_size and engine
    (the optimizer state is sharded per rank, in the engine's own format). Facts an older checkpoint lacks
    (engine) are not compared; its data identity may be the manifest-file hash (`data_manifest_sha256`).
    """
    fresh = "use resume=none or a new output_dir to start over"
    was = state.get("world_size")
    if was is not None and was != run["world_size"]:
        raise TrajtuneError(
            f"cannot resume from {checkpoint}: it was written by {was} rank(s) and this run has {run['world_size']}; "
            f"the optimizer state is sharded per rank. Resume with {was} rank(s), or export the weights "
            f"(trajtune export --checkpoint {checkpoint} --out DIR) and start a new run from them (model=DIR, "
            "resume=none)")
    if state.get("engine", run["engine"]) != run["engine"]:
        raise TrajtuneError(f"cannot resume from {checkpoint}: it was written by engine={state['engine']}, this run "
                            f"uses engine={run['engine']}; set engine={state['engine']}, or {fresh}")
    data = state.get("data_sha256", state.get("data_manifest_sha256"))
    if data != run["data_sha256"]:
        raise TrajtuneError(f"cannot resume from {checkpoint}: it trained on other data (data_sha256 {data}, this "
                            f"dataset's is {run['data_sha256']}: the build's hash of packs, tokenizer and seq_len, or "
                            "for a build without one the hash of manifest.json, which every rebuild changes), so the "
                            f"data order may differ; point data= at the dataset it trained on, or {fresh}")
    for key in ("global_batch_size", "seed"):
        if state.get(key) != run[key]:
            raise TrajtuneError(f"cannot resume from {checkpoint}: its {key} is {state.get(key)!r}, this run's is "
                                f"{run[key]!r}, so the data order would differ; set {key}={state.get(key)}, or {fresh}")


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine: Any, output_dir: str | Path, step: int, trainer_state: dict[str, Any], keep_last: int) -> Path:
    """Collective: write checkpoint `step` atomically, point `latest` at it, drop all but the last `keep_last`."""
    root = checkpoints_dir(output_dir)
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}"
    if engine.rank == 0:
        for stale in root.glob(".tmp-*"):  # left by a crash during an earlier save
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    engine.barrier()
    engine.save_checkpoint(tmp)
    torch.save(_rng_state(), tmp / f"rng_rank{engine.rank}.pt")
    if engine.rank == 0:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=2) + "\n")
    engine.barrier()
    if engine.rank == 0:
        replaced = root / f".old-{step_name(step)}"
        if final.exists():  # same step saved twice (e.g. a signal right at save_steps): keep the newer
            # Moved aside, not deleted, until `latest` is rewritten: a crash here leaves no dangling pointer.
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final, replaced)
        os.replace(tmp, final)
        pointer_tmp = root / f".{LATEST}.tmp"
        pointer_tmp.write_text(final.name + "\n")
        os.replace(pointer_tmp, root / LATEST)
        shutil.rmtree(replaced, ignore_errors=True)
        # Rotate among this timeline only: checkpoints newer than `step` (left by a run resumed from an older
        # one) are not ours to judge, and sorting by name would otherwise delete the one just saved.
        ours = sorted(p for p in root.glob("step_*") if p.is_dir() and p.name <= final.name)
        for old in ours[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    engine.barrier()
    return final


def load(engine: Any, checkpoint: Path) -> dict[str, Any]:
    """Collective: restore engine state and this rank's RNG from `checkpoint`; returns its trainer_state."""
    state = read_state(checkpoint)
    engine.load_checkpoint(checkpoint)
    rng_file = checkpoint / f"rng_rank{engine.rank}.pt"
    if not rng_file.is_file():
        raise TrajtuneError(f"{checkpoint}: no {rng_file.name}; it was written by a run with fewer ranks "
                            f"(world size {state.get('world_size')}); resume with that world size")
    _set_rng_state(torch.load(rng_file, weights_only=False))
    return state
