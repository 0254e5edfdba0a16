"""OpenAI chat messages -> canonical, and canonical -> OpenAI (`to_openai`).

Reads `{tools|functions, messages}` records: modern `tool_calls` / `tool_call_id` / role `tool`, and the legacy
function-calling API (`functions`, assistant `function_call`, role `function`), which becomes tools / tool_calls
/ tool. Canonical files are OpenAI records too, so their `id`, `source` and `meta` are kept as they are.
`to_openai` writes arguments as JSON strings, as the API does; converting its output back gives the record.
"""

from __future__ import annotations

import json
from typing import Any

from ..trajectory import InvalidRecord, Trajectory
from .common import FileContext, finish, meta_with_extras, need, text_of_parts

NAME = "openai"
_USED = frozenset({"id", "source", "tools", "functions", "messages", "meta"})


def looks_like(record: dict[str, Any]) -> bool:
    messages = record.get("messages")
    return isinstance(messages, list) and bool(messages) and all(isinstance(m, dict) and "role" in m for m in messages)


def _message(m: Any, where: str) -> Any:
    """One message in modern form; messages that need no change are returned as they are (no copy)."""
    if not isinstance(m, dict):
        return m  # validate_record reports it
    role = m.get("role")
    if role == "function":  # legacy tool result
        out = {k: v for k, v in m.items() if k != "role"}
        return {"role": "tool", **out}
    if "function_call" in m or isinstance(m.get("content"), list):
        out = dict(m)
        if isinstance(out.get("content"), list):
            out["content"] = text_of_parts(out["content"], where)
        call = out.pop("function_call", None)
        if call is not None:
            if not isinstance(call, dict):
                raise InvalidRecord("bad_message", f"{where}: function_call must be an object")
            out["tool_calls"] = [*(out.get("tool_calls") or []), {"type": "function", "function": call}]
        return out
    return m


def convert(record: Any, rid: str, ctx: FileContext | None = None) -> Trajectory:
    """One OpenAI record as a validated canonical trajectory.

    >>> convert({"messages": [{"role": "user", "content": "hi"}]}, "f:1")["id"]
    'f:1'
    """
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise InvalidRecord("no_messages", "`messages` is missing" if messages is None else "`messages` must be a list")
    tools = record.get("tools")
    if tools is None and record.get("functions") is not None:
        functions = need(record, "functions", list)
        tools = [{"type": "function", "function": f} for f in functions]
    out: dict[str, Any] = {"id": record.get("id", rid), "source": record.get("source", NAME)}
    out["tools"] = tools
    out["messages"] = [_message(m, f"messages[{i}]") for i, m in enumerate(messages)]
    out["meta"] = meta_with_extras(record, _USED)
    return finish(out, out["source"], rid, keep_empty_meta="meta" in record)


def to_openai(record: Trajectory) -> dict[str, Any]:
    """A canonical record with every tool call's arguments as a JSON string (what the OpenAI API sends).

    Everything else is shared with `record`, not copied: treat the result as read-only.
    """
    messages = []
    for m in record["messages"]:
        if m.get("tool_calls"):
            calls = [
                {**c, "function": {"name": c["function"]["name"],
                                   "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False)}}
                for c in m["tool_calls"]
            ]  # fmt: skip
            m = {**m, "tool_calls": calls}
        messages.append(m)
    return {**record, "messages": messages}
