"""Environments, one per file behind one interface (`base.Environment`); `make_env(name)` builds one.

Built in: sql (SQLite, AgentBench DB tasks), shell (a bubblewrap sandbox), apis (simulated everyday APIs),
seal_tools (Seal-Tools' catalog). A user's own: `make_env("my_module:MyEnv")`, any importable subclass.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import TrajtuneError
from .base import SPLITS, Environment, Task, Unsolvable, tool_error, tool_message  # noqa: F401  (the wing's API)

# name -> module of this package defining it (imported on use: sandboxes and databases load only when asked for).
BUILTIN: dict[str, str] = {"sql": "sql", "shell": "shell", "apis": "apis", "seal_tools": "seal_tools"}


def env_class(name: str) -> type[Environment]:
    """The Environment subclass for a built-in name or `module:Class`; TrajtuneError naming the choices."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise TrajtuneError(f"--env {name}: cannot load {attr!r} from module {module_name!r} ({e}); give "
                                "MODULE:CLASS with the module importable (on PYTHONPATH)") from None
        if not (isinstance(cls, type) and issubclass(cls, Environment)):
            raise TrajtuneError(f"--env {name}: {attr} is not a subclass of trajtune.data_builders.envs.Environment")
        return cls
    if name not in BUILTIN:
        raise TrajtuneError(f"unknown environment {name!r}; choose one of {', '.join(BUILTIN)}, or MODULE:CLASS")
    module = importlib.import_module(f".{BUILTIN[name]}", __name__)
    return next(c for c in vars(module).values()
                if isinstance(c, type) and issubclass(c, Environment) and getattr(c, "name", None) == name)


def make_env(name: str, tasks_file: str | None = None, **options: Any) -> Environment:
    """A ready environment: `make_env("sql", tasks_file="dev.jsonl")`."""
    return env_class(name)(tasks_file=tasks_file, **options)
