"""AgentInstruct (THUDM) -> canonical: ShareGPT turns with a per-turn `loss` flag (null / false / true).

The agent's ReAct text ("Think: ... Act: bash ...") stays text: these trajectories act through the
conversation, not through tool calls. `loss: null` means "default" (assistant turns train), `false` keeps the
in-context example turns out of the loss, `true` trains them.
"""

from __future__ import annotations

from typing import Any

from ..trajectory import Trajectory
from . import sharegpt
from .common import FileContext

NAME = "agentinstruct"


def looks_like(record: dict[str, Any]) -> bool:
    turns = record.get("conversations")
    return sharegpt.looks_like(record) and any("loss" in t for t in turns)


def convert(record: Any, rid: str, ctx: FileContext | None = None) -> Trajectory:
    """One AgentInstruct record; same shape rules as ShareGPT, source `agentinstruct`."""
    return sharegpt.convert(record, rid, ctx, source=NAME)
