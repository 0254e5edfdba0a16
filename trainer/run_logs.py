"""The run directory's `logs/` folder: one log file per rank, and the measured step and checkpoint times.

```
logs/rank_K.log    rank K's trainer log lines (logger "trajtune"), Python warnings, a line per logged step and the
                   error that ended it; every start of the run appends, beginning with a line that names the rank,
                   host, pid and the rendezvous environment it saw
logs/timing.json   {"world_size", "step_seconds", "checkpoint_seconds"}: rank 0's first measurement of a training
                   step and of a checkpoint save in the latest start of the run (see `read_timing`)
```
The console keeps rank 0's log lines (launcher/cmd_train.py shows other ranks' errors only); lines meant for the
file alone (per-step lines, timings) go to `FILE_ONLY`, so they never break the progress bar.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import traceback
from pathlib import Path
from typing import Any

from ..data_builders.errors import TrajtuneError

# Lines for the rank log only: not propagated to the console handlers (nor anywhere else).
FILE_ONLY = logging.getLogger("trajtune.rank_log")
FILE_ONLY.propagate = False
FILE_ONLY.setLevel(logging.INFO)

TIMING_FILE = "timing.json"


def logs_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "logs"


class RankLog:
    """Appends this process's trajtune log lines and Python warnings to `logs/rank_{rank}.log` until `close()`.

    Records pass at the level the "trajtune" logger has (the CLI: INFO; a library caller keeps its own), plus every
    `FILE_ONLY` line.
    """

    def __init__(self, output_dir: str | Path, rank: int, world_size: int, rendezvous: str) -> None:
        self.path = logs_dir(output_dir) / f"rank_{rank}.log"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._loggers = [logging.getLogger("trajtune"), FILE_ONLY, logging.getLogger("py.warnings")]
        for logger in self._loggers:
            logger.addHandler(self.handler)
        logging.captureWarnings(True)  # warnings -> logger "py.warnings" -> this file (and the console as before)
        FILE_ONLY.info("rank %d of %d on host %s, pid %d, started; %s", rank, world_size, socket.gethostname(),
                       os.getpid(), rendezvous)

    def failure(self, error: BaseException) -> None:
        """Write the error that ends this rank into the file only (the CLI prints it on the console)."""
        if isinstance(error, TrajtuneError):
            text = f"error: {error}"
        elif isinstance(error, KeyboardInterrupt):
            text = "aborted by Ctrl-C (a second one, or one before the first step)"
        else:
            text = "".join(traceback.format_exception(error)).rstrip()
        self.handler.handle(logging.LogRecord(FILE_ONLY.name, logging.ERROR, __file__, 0, text, None, None))

    def close(self) -> None:
        logging.captureWarnings(False)
        for logger in self._loggers:
            logger.removeHandler(self.handler)
        self.handler.close()


class Timing:
    """Rank 0's first measurement of each duration (`step_seconds`, `checkpoint_seconds`) in this start of the run:
    written to logs/timing.json and logged once as soon as it is known. Does nothing on other ranks."""

    def __init__(self, output_dir: str | Path, is_main: bool, world_size: int) -> None:
        self.path = logs_dir(output_dir) / TIMING_FILE
        self.is_main = is_main
        self.values: dict[str, Any] = {"world_size": world_size}

    def record(self, key: str, seconds: float, step: int) -> None:
        if not self.is_main or key in self.values:
            return
        self.values[key] = round(seconds, 3)
        tmp = self.path.with_name(f".{TIMING_FILE}.tmp")
        tmp.write_text(json.dumps(self.values, indent=2) + "\n")
        os.replace(tmp, self.path)  # a reader (a Slurm script) never sees half a file
        what = "a training step" if key == "step_seconds" else "a checkpoint save"
        FILE_ONLY.info("measured: %s takes %.3f s (step %d)", what, seconds, step)


def read_timing(output_dir: str | Path) -> dict[str, Any] | None:
    """logs/timing.json of a run: {"world_size", "step_seconds", "checkpoint_seconds"} (each key once measured), or
    None before the run measured anything. A preemption signal must come at least step_seconds +
    checkpoint_seconds before the kill: the step in flight finishes, then the checkpoint is written.

    Example: `t = read_timing("runs/a"); lead_needed = t["step_seconds"] + t["checkpoint_seconds"]`.
    """
    path = logs_dir(output_dir) / TIMING_FILE
    return json.loads(path.read_text()) if path.is_file() else None
