"""GLM-4 finetune format -> canonical.

`{messages: [{role: "system", content, tools: [...]}, {role: "user"}, {role: "assistant", content}, {role:
"observation", content}]}`. The tools ride on the system message; a tool call is an assistant message whose
content is the JSON `{"name", "arguments"}` of a defined tool; `observation` is the tool result. Other message
keys (`image`) are kept on the message.
"""

from __future__ import annotations

import json
from typing import Any

from ..trajectory import InvalidRecord, Trajectory
from .common import FileContext, finish, meta_with_extras, source_id, tools_from_specs

NAME = "glm4"
_USED = frozenset({"id", "messages", "tools"})


def looks_like(record: dict[str, Any]) -> bool:
    messages = record.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict) and (m.get("role") == "observation" or "tools" in m) for m in messages
    )


def _as_call(content: Any, names: set[str]) -> dict[str, Any] | None:
    """The call an assistant content spells, if it is the JSON of a call to a defined tool."""
    if not isinstance(content, str) or not content.lstrip().startswith("{"):
        return None
    try:
        obj = json.loads(content)
    except json.JSONDecodeError:
        return None
    if isinstance(obj, dict) and obj.get("name") in names and set(obj) <= {"name", "arguments", "parameters"}:
        return {
            "type": "function",
            "function": {"name": obj["name"], "arguments": obj.get("arguments", obj.get("parameters", {}))},
        }
    return None


def convert(record: Any, rid: str, ctx: FileContext | None = None) -> Trajectory:
    """One GLM-4 record as a validated canonical trajectory."""
    raw = record.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRecord("no_messages", "`messages` is missing or empty")
    specs: list[Any] = list(record.get("tools") or [])
    for m in raw:
        if isinstance(m, dict) and m.get("tools"):
            specs.extend(m["tools"])
    tools = tools_from_specs(specs, "`tools`")
    names = {t["function"]["name"] for t in tools}
    messages: list[Any] = []
    for m in raw:
        if not isinstance(m, dict):
            messages.append(m)  # validate_record reports it
            continue
        msg = {k: v for k, v in m.items() if k != "tools"}
        if msg.get("role") == "observation":
            msg["role"] = "tool"
        elif msg.get("role") == "assistant" and (call := _as_call(msg.get("content"), names)):
            msg["content"] = None
            msg["tool_calls"] = [call]
        messages.append(msg)
    out = {"id": source_id(record, rid), "tools": tools, "messages": messages, "meta": meta_with_extras(record, _USED)}
    return finish(out, NAME, rid)
