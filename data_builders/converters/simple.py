"""Simple instruction -> call records (`{"instruction", "function_call": {"name", "parameters"}}`) -> canonical.

These records name the call but not the tools, so the tools come from a file (`--tools configs/tools.json`,
OpenAI tools format). Optional `input` is appended to the instruction; optional `output` (a string) becomes a
final assistant message. The call has no result.
"""

from __future__ import annotations

from typing import Any

from ..errors import TrajtuneError
from ..trajectory import Trajectory
from .common import (
    FileContext,
    call_from_obj,
    finish,
    meta_with_extras,
    need,
    source_id,
)

NAME = "simple"
_USED = frozenset({"id", "instruction", "input", "function_call", "output"})


def looks_like(record: dict[str, Any]) -> bool:
    return "instruction" in record and isinstance(record.get("function_call"), dict)


def prepare(ctx: FileContext) -> None:
    if ctx.tools is None:
        raise TrajtuneError(
            f"{ctx.path}: `simple` records name calls but not tools; pass --tools FILE "
            "(a JSON list of OpenAI tools, e.g. configs/tools.json)"
        )


def convert(record: Any, rid: str, ctx: FileContext | None = None) -> Trajectory:
    """One simple record; `ctx.tools` (from --tools) are the record's tools."""
    text = need(record, "instruction", str)
    if isinstance(record.get("input"), str) and record["input"].strip():
        text = f"{text}\n\n{record['input']}"
    call = call_from_obj(need(record, "function_call", dict), "`function_call`")
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": text},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    if isinstance(record.get("output"), str) and record["output"]:
        messages.append({"role": "assistant", "content": record["output"]})
    tools = ctx.tools if ctx is not None and ctx.tools is not None else []
    out = {"id": source_id(record, rid), "tools": tools, "messages": messages, "meta": meta_with_extras(record, _USED)}
    return finish(out, NAME, rid)
