"""NousResearch hermes-function-calling-v1 -> canonical.

ShareGPT turns (`system`/`human`/`gpt`/`tool`). The system prompt lists the tools inside `<tools> ... </tools>`
(as JSON or as a Python literal, single quotes and `True`); the assistant calls inside
`<tool_call>{"arguments": ..., "name": ...}</tool_call>` (also often a Python literal); a tool turn holds one
`<tool_response>{"name", "content"}</tool_response>` per call. Text outside the tags stays as content. The
system prompt is kept verbatim. Records without tools (the json-mode subsets) convert as plain chat.
"""

from __future__ import annotations

import re
from typing import Any

from ..trajectory import InvalidRecord, Trajectory
from . import sharegpt
from .common import (
    FileContext,
    call_from_obj,
    finish,
    loose_json,
    meta_with_extras,
    source_id,
    tool_content,
    tools_from_specs,
)

NAME = "hermes"
_TOOLS = re.compile(r"<tools>(.*?)</tools>", re.S)
_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
_RESPONSE = re.compile(r"<tool_response>(.*?)</tool_response>", re.S)
_USED = frozenset({"id", "conversations"})


def looks_like(record: dict[str, Any]) -> bool:
    if not sharegpt.looks_like(record):
        return False
    return any(
        "<tool_call>" in str(t.get("value")) or "<tools>" in str(t.get("value")) for t in record["conversations"]
    )


def convert(record: Any, rid: str, ctx: FileContext | None = None) -> Trajectory:
    """One Hermes record as a validated canonical trajectory."""
    messages = sharegpt.convert_turns(sharegpt.conversations(record))
    tools: list[Any] = []
    out_messages: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"conversations[{i}]"
        text = m.get("content")
        if not isinstance(text, str):
            out_messages.append(m)
            continue
        # The prose also says "within <tools> </tools> XML tags": the tool list is the non-empty block.
        blocks = [b.strip() for b in _TOOLS.findall(text) if b.strip()] if m["role"] == "system" else []
        if blocks:
            tools = tools_from_specs(loose_json(blocks[-1], f"{where} <tools>", "bad_tools"), f"{where} <tools>")
        if m["role"] == "assistant" and "<tool_call>" in text:
            calls = [
                call_from_obj(loose_json(body.strip(), f"{where} <tool_call>"), where) for body in _CALL.findall(text)
            ]
            rest = _CALL.sub("", text).strip()
            out_messages.append({**m, "content": rest or None, "tool_calls": calls})
        elif m["role"] == "tool" and "<tool_response>" in text:
            outside = _RESPONSE.sub("", text).strip()
            if outside:  # text beside the response blocks: no canonical place for it, and it must not vanish
                raise InvalidRecord("unsupported", f"{where}: tool turn has text outside <tool_response> blocks: "
                                    f"{outside[:80]!r}")
            for body in _RESPONSE.findall(text):
                try:
                    response = loose_json(body.strip(), f"{where} <tool_response>")
                except InvalidRecord:  # a plain-text result: keep it as it is
                    response = body.strip()
                if isinstance(response, dict) and "content" in response:
                    tool_msg = {"role": "tool", "content": tool_content(response["content"])}
                    if isinstance(response.get("name"), str):
                        tool_msg["name"] = response["name"]
                else:
                    tool_msg = {"role": "tool", "content": tool_content(response)}
                out_messages.append(tool_msg)
        elif m["role"] == "tool" and not text.strip():
            raise InvalidRecord("bad_message", f"{where}: empty tool turn")
        else:
            out_messages.append(m)
    out = {
        "id": source_id(record, rid),
        "tools": tools,
        "messages": out_messages,
        "meta": meta_with_extras(record, _USED),
    }
    return finish(out, NAME, rid)
