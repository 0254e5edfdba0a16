"""ChatGLM3 finetune format -> canonical.

`{tools: [function specs], conversations: [{role, content}, ..., {role: "tool", name, parameters,
observation}]}`. A `tool` entry is one step, as ChatGLM3's preprocess_utils renders it: the assistant calls
`name(**parameters)` (trained unless the entry says `loss: false`), then the observation comes back as the tool
result (never trained). The assistant text before it ("Okay, let's look up...") stays its own message.
"""

from __future__ import annotations

from typing import Any

from ..trajectory import InvalidRecord, Trajectory
from .common import (
    FileContext,
    finish_chat,
    tool_content,
)

NAME = "chatglm3"
_ROLES = ("system", "user", "assistant")
_USED = frozenset({"id", "tools", "conversations"})


def looks_like(record: dict[str, Any]) -> bool:
    turns = record.get("conversations")
    return isinstance(turns, list) and bool(turns) and all(isinstance(t, dict) and "role" in t for t in turns)


def convert(record: Any, rid: str, ctx: FileContext | None = None) -> Trajectory:
    """One ChatGLM3 record as a validated canonical trajectory."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise InvalidRecord("no_messages", "`conversations` is missing or empty")
    messages: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise InvalidRecord("bad_message", f"{where} is not an object")
        role = turn.get("role")
        if role == "tool":
            if not isinstance(turn.get("name"), str):
                raise InvalidRecord("bad_message", f"{where}: a tool step needs the function `name`")
            call_msg: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"type": "function", "function": {"name": turn["name"], "arguments": turn.get("parameters", {})}}
                ],
            }
            if turn.get("loss") is not None:
                call_msg["loss"] = turn["loss"]
            messages.append(call_msg)
            messages.append(
                {"role": "tool", "name": turn["name"], "content": tool_content(turn.get("observation", ""))}
            )
        elif role in _ROLES:
            msg = {"role": role, "content": turn.get("content")}
            if turn.get("loss") is not None:
                msg["loss"] = turn["loss"]
            messages.append(msg)
        else:
            raise InvalidRecord(
                "bad_role", f"{where} has role {role!r}; ChatGLM3 records use system/user/assistant/tool"
            )
    return finish_chat(record, rid, messages, _USED, NAME)
