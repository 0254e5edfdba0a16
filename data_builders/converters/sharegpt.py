"""ShareGPT (`{conversations: [{from, value}]}`) -> canonical, with LLaMA-Factory's tool-calling extension.

FastChat roles are `human`/`gpt`/`system`; LLaMA-Factory adds `function_call` (the value is a JSON call
`{"name", "arguments"}` or a list of them) and `observation` (the tool result), a `tools` column holding a JSON
string of function specs, and a `system` column. Results carry no call ids: they answer the open calls in order.
A per-turn `loss` flag (AgentInstruct) is kept. `convert_turns` is shared with the AgentInstruct and ToolACE
converters, which are ShareGPT with their own extras.
"""

from __future__ import annotations

from typing import Any

from ..trajectory import InvalidRecord, Trajectory
from .common import (
    FileContext,
    calls_from_text,
    finish_chat,
)

NAME = "sharegpt"
ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "chatgpt": "assistant", "bing": "assistant",
    "system": "system",
    "function_call": "call",
    "observation": "tool", "tool": "tool", "function": "tool",
}  # fmt: skip
_USED = frozenset({"id", "conversations", "tools", "system"})


def looks_like(record: dict[str, Any]) -> bool:
    turns = record.get("conversations")
    return isinstance(turns, list) and bool(turns) and all(isinstance(t, dict) and "from" in t for t in turns)


def conversations(record: Any) -> list[Any]:
    """The `conversations` list, or InvalidRecord('no_messages')."""
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list) or not turns:
        raise InvalidRecord("no_messages", "`conversations` is missing or empty")
    return turns


def convert_turns(turns: list[Any]) -> list[dict[str, Any]]:
    """ShareGPT turns as canonical-shaped messages (validation happens later, in `finish`)."""
    messages: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise InvalidRecord("bad_message", f"{where} is not an object")
        role = ROLES.get(turn.get("from"))  # type: ignore[arg-type]
        if role is None:
            raise InvalidRecord(
                "bad_role", f"{where} has from={turn.get('from')!r}; expected one of {', '.join(ROLES)}"
            )
        value = turn.get("value")
        if role == "call":
            if not isinstance(value, str):
                raise InvalidRecord("bad_message", f"{where}: a function_call value must be a JSON string")
            msg: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls_from_text(value, where)}
        else:
            msg = {"role": role, "content": value}
        if turn.get("loss") is not None:
            msg["loss"] = turn["loss"]
        messages.append(msg)
    return messages


def convert(record: Any, rid: str, ctx: FileContext | None = None, source: str = NAME) -> Trajectory:
    """One ShareGPT / LLaMA-Factory record as a validated canonical trajectory."""
    messages = convert_turns(conversations(record))
    system = record.get("system")
    if isinstance(system, str) and system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return finish_chat(record, rid, messages, _USED, source)
