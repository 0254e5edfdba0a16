"""glaive-function-calling-v2 (raw) -> canonical.

Each record is two strings. `system`: "SYSTEM: <prose> -\n{function JSON}\n\n{function JSON}..." (or prose
alone, "with no access to external functions"). `chat`: turns introduced by "USER: ", "ASSISTANT: " and
"FUNCTION RESPONSE: ", assistant turns ending in "<|endoftext|>". An assistant call is
`<functioncall> {"name": "f", "arguments": '{"k": "v"}'}` -- the arguments are a JSON string wrapped in single
quotes, which is not JSON, so the call is read with a pattern first. The system message keeps the prose only;
the functions become `tools`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..trajectory import InvalidRecord, Trajectory
from .common import (
    FileContext,
    finish,
    loose_json,
    meta_with_extras,
    need,
    source_id,
    tools_from_specs,
)

NAME = "glaive"
_TURN = re.compile(r"(?:\A|\n)(USER|ASSISTANT|FUNCTION RESPONSE): ?")
_ROLE = {"USER": "user", "ASSISTANT": "assistant", "FUNCTION RESPONSE": "tool"}
_QUOTED_ARGS = re.compile(r"""\A\{\s*"name"\s*:\s*"([^"]+)"\s*,\s*"arguments"\s*:\s*'(.*)'\s*\}\Z""", re.S)
_USED = frozenset({"id", "system", "chat"})


def looks_like(record: dict[str, Any]) -> bool:
    return isinstance(record.get("chat"), str) and isinstance(record.get("system"), str)


def parse_system(system: str) -> tuple[str, list[Any]]:
    """(prose, function specs) from a glaive system string."""
    text = system.removeprefix("SYSTEM:").strip()
    start = text.find("{")
    if start < 0:
        return text, []
    prose, specs, decoder, pos = text[:start].strip(), [], json.JSONDecoder(), start
    while pos < len(text):
        try:
            spec, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            line = text.count("\n", 0, e.pos) + 1
            raise InvalidRecord(
                "bad_tools",
                f"`system`: function definition {len(specs) + 1} is not valid JSON "
                f"({e.msg}, line {line} of the system text)",
            ) from None
        specs.append(spec)
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
    return prose, specs


def parse_call(body: str, where: str) -> dict[str, Any]:
    """One `<functioncall>` payload as a call (arguments may stay a JSON string: validation parses it)."""
    body = body.strip()
    quoted = _QUOTED_ARGS.match(body)
    if quoted:
        return {"type": "function", "function": {"name": quoted.group(1), "arguments": quoted.group(2)}}
    obj = loose_json(body, f"{where} <functioncall>")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise InvalidRecord("unsupported", f"{where}: <functioncall> has no function name")
    return {"type": "function", "function": {"name": obj["name"], "arguments": obj.get("arguments", {})}}


def convert(record: Any, rid: str, ctx: FileContext | None = None) -> Trajectory:
    """One raw glaive record as a validated canonical trajectory."""
    prose, specs = parse_system(need(record, "system", str))
    chat = need(record, "chat", str)
    parts = _TURN.split(chat)
    if parts[0].strip():
        raise InvalidRecord(
            "unsupported", f"`chat` starts with text before the first USER/ASSISTANT turn: {parts[0][:40]!r}"
        )
    messages: list[dict[str, Any]] = [{"role": "system", "content": prose}] if prose else []
    for n, (marker, text) in enumerate(zip(parts[1::2], parts[2::2])):
        where = f"chat turn {n + 1} ({marker})"
        text = text.strip().removesuffix("<|endoftext|>").strip()
        role = _ROLE[marker]
        if role == "assistant" and "<functioncall>" in text:
            before, _, after = text.partition("<functioncall>")
            messages.append(
                {"role": "assistant", "content": before.strip() or None, "tool_calls": [parse_call(after, where)]}
            )
        else:
            messages.append({"role": role, "content": text})
    out = {
        "id": source_id(record, rid),
        "tools": tools_from_specs(specs, "`system` functions"),
        "messages": messages,
        "meta": meta_with_extras(record, _USED),
    }
    return finish(out, NAME, rid)
