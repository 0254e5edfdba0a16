"""LLaMA-Factory v1 records -> canonical: messages with typed content parts, and per-message `loss_weight`.

A message's content is a list of parts `{"type": "text"|"reasoning"|"tool_call", "value"}`: text parts join into
`content`, reasoning parts into `reasoning_content` (the field Qwen3 / DeepSeek-R1 templates read), each
`tool_call` part (`{"name", "arguments"}` JSON) is one call. A tool message whose text is a JSON list of
`{"name", "content"[, "tool_call_id"]}` holds parallel results: one tool message each, answering the calls in
order (the ids there match no call, so they are not kept). `loss_weight` 0 / 1 becomes `loss` false / true; any
other weight is unsupported (canonical loss is on or off), never rounded silently. `tools` is a JSON string.
"""

from __future__ import annotations

import json
from typing import Any

from ..trajectory import InvalidRecord, Trajectory
from .common import (
    FileContext,
    calls_from_text,
    finish_chat,
    tool_content,
)

NAME = "llamafactory_v1"
_USED = frozenset({"id", "messages", "tools"})


def looks_like(record: dict[str, Any]) -> bool:
    messages = record.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict)
        and (
            "loss_weight" in m
            or (
                isinstance(m.get("content"), list)
                and m["content"]
                and isinstance(m["content"][0], dict)
                and "value" in m["content"][0]
            )
        )
        for m in messages
    )


def _parallel_results(text: str) -> list[dict[str, Any]] | None:
    if not text.startswith("[{"):
        return None
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(items, list) and items and all(isinstance(x, dict) and {"name", "content"} <= set(x) for x in items):
        return [{"role": "tool", "name": x["name"], "content": tool_content(x["content"])} for x in items]
    return None


def convert(record: Any, rid: str, ctx: FileContext | None = None) -> Trajectory:
    """One v1 record as a validated canonical trajectory."""
    raw = record.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRecord("no_messages", "`messages` is missing or empty")
    messages: list[Any] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            messages.append(m)
            continue
        msg = {k: v for k, v in m.items() if k not in ("content", "loss_weight")}
        content = m.get("content")
        if isinstance(content, list):
            texts, thoughts, calls = [], [], []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                value = part.get("value") if isinstance(part, dict) else None
                if not isinstance(value, str) or kind not in ("text", "reasoning", "tool_call"):
                    raise InvalidRecord(
                        "unsupported",
                        f"{where}.content[{j}]: expected a text/reasoning/tool_call part with a string value",
                    )
                if kind == "text":
                    texts.append(value)
                elif kind == "reasoning":
                    thoughts.append(value)
                else:
                    calls.extend(calls_from_text(value, f"{where}.content[{j}]"))
            content = "".join(texts) if texts or not calls else None
            if thoughts:
                msg["reasoning_content"] = "\n".join(thoughts)
            if calls:
                msg["tool_calls"] = calls
        msg["content"] = content
        if "loss_weight" in m:
            weight = m["loss_weight"]
            if weight not in (0, 1) or isinstance(weight, bool):
                raise InvalidRecord(
                    "unsupported", f"{where}: loss_weight {weight!r}; only 0 or 1 convert to a loss flag"
                )
            msg["loss"] = weight == 1
        if msg.get("role") == "tool" and isinstance(content, str) and (results := _parallel_results(content)):
            messages.extend(results)
            continue
        messages.append(msg)
    return finish_chat(record, rid, messages, _USED, NAME)
