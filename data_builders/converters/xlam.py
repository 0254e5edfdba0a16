"""xLAM / APIGen (Salesforce xlam-function-calling-60k) -> canonical.

`{id, query, tools, answers}` where `tools` and `answers` are JSON strings. A tool's `parameters` maps each
name to `{type, description, default}` with Python type names (`str`, `List[int]`, `float, optional`); they
become a JSON Schema object. A parameter is required unless its type says `optional` or it has a default.
`answers` (the verified calls) become one assistant message with parallel tool calls; there are no results.
"""

from __future__ import annotations

from typing import Any

from ..trajectory import InvalidRecord, Tool, Trajectory
from .common import (
    FileContext,
    call_from_obj,
    calls_from_text,
    finish,
    fix_schema,
    function_tool,
    loose_json,
    meta_with_extras,
    need,
    source_id,
    type_schema,
)

NAME = "xlam"
_USED = frozenset({"id", "query", "tools", "answers"})


def looks_like(record: dict[str, Any]) -> bool:
    return "query" in record and "answers" in record and "tools" in record


def params_schema(params: Any, what: str) -> dict[str, Any]:
    """A `{name: {type, description, default}}` map as a JSON Schema object."""
    if not isinstance(params, dict):
        raise InvalidRecord("bad_tools", f"{what}: parameters must be an object")
    if params.get("type") == "object" or params.get("type") == "dict":  # already a JSON Schema
        return fix_schema(params)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, spec in params.items():
        spec = spec if isinstance(spec, dict) else {}
        schema, optional = type_schema(spec.get("type"))
        if spec.get("description"):
            schema["description"] = spec["description"]
        if "default" in spec:
            schema["default"] = spec["default"]
        properties[name] = schema
        if not optional and "default" not in spec:
            required.append(name)
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    return out


def xlam_tools(specs: Any) -> list[Tool]:
    specs = loose_json(specs, "`tools`", "bad_tools")
    if not isinstance(specs, list):
        raise InvalidRecord("bad_tools", "`tools` must be a list")
    tools = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidRecord("bad_tools", f"tools[{i}] has no name")
        tools.append(
            function_tool(
                spec["name"], spec.get("description"), params_schema(spec.get("parameters", {}), f"tools[{i}]")
            )
        )
    return tools


def convert(record: Any, rid: str, ctx: FileContext | None = None) -> Trajectory:
    """One xLAM record: user query, then the answer calls."""
    query = need(record, "query", str)
    answers = record.get("answers")
    calls = calls_from_text(answers, "`answers`") if isinstance(answers, str) else calls_from_text_list(answers)
    out = {
        "id": source_id(record, rid),
        "tools": xlam_tools(record.get("tools")),
        "messages": [{"role": "user", "content": query}, {"role": "assistant", "content": None, "tool_calls": calls}],
        "meta": meta_with_extras(record, _USED),
    }
    return finish(out, NAME, rid)


def calls_from_text_list(answers: Any) -> list[dict[str, Any]]:
    if not isinstance(answers, list) or not answers:
        raise InvalidRecord("unsupported", "`answers` must be a JSON list of calls")
    return [call_from_obj(a, f"answers[{i}]") for i, a in enumerate(answers)]
