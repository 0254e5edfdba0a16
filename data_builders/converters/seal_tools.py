"""Seal-Tools -> canonical.

A record is `{id, query, calling: [{api, parameters, responses}]}`; the APIs are defined once, in `tool.jsonl`
next to the data file (`{api_name, api_description, parameters: {name: {type, description}}, required}`), or,
when there is none, by `--tools`. Each record's tools are the APIs it calls; the calls form one assistant message
(later calls may name earlier outputs, e.g. "API_call_0", as string values). There are no tool results.
Seal-Tools often writes numbers as strings (`"age": "63"` for an `int` parameter); a string that reads exactly
as the declared integer / number / boolean is turned into it, and `meta.coerced_args` counts those. Anything
else that breaks the schema is left alone and fails validation.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from ..errors import TrajtuneError
from ..trajectory import InvalidRecord, Tool, Trajectory, iter_lines, parse_line
from .common import (
    FileContext,
    finish,
    function_tool,
    meta_with_extras,
    need,
    source_id,
    type_schema,
)

NAME = "seal_tools"
_USED = frozenset({"id", "query", "calling"})
_INT = re.compile(r"-?\d+")
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def looks_like(record: dict[str, Any]) -> bool:
    return "query" in record and "calling" in record


def seal_tool(spec: dict[str, Any]) -> Tool:
    """One `tool.jsonl` line as an OpenAI tool."""
    properties: dict[str, Any] = {}
    for name, p in (spec.get("parameters") or {}).items():
        p = p if isinstance(p, dict) else {}
        schema, _ = type_schema(p.get("type"))
        if p.get("description"):
            schema["description"] = p["description"]
        properties[name] = schema
    params: dict[str, Any] = {"type": "object", "properties": properties}
    required = [r for r in spec.get("required") or [] if r in properties]
    if required:
        params["required"] = required
    return function_tool(spec["api_name"], spec.get("api_description"), params)


def coerce(value: Any, schema: dict[str, Any]) -> Any:
    """`value` as the schema's scalar type if it is a string spelling exactly that; else `value` unchanged."""
    kind = schema.get("type")
    if not isinstance(value, str) or kind not in ("integer", "number", "boolean"):
        return value
    text = value.strip()
    if kind == "boolean":
        return {"true": True, "false": False}.get(text.lower(), value)
    if kind == "integer" and _INT.fullmatch(text):
        return int(text)
    if kind == "number" and _NUMBER.fullmatch(text):
        return int(text) if _INT.fullmatch(text) else float(text)
    return value


@lru_cache(maxsize=4)
def load_catalog(path: str) -> dict[str, dict[str, Any]]:
    """tool.jsonl: API name -> its Seal-Tools spec (parameters, required, responses, field)."""
    specs: dict[str, dict[str, Any]] = {}
    for lineno, raw in iter_lines(path):
        try:
            spec = parse_line(raw)
            specs[spec["api_name"]] = spec
        except (InvalidRecord, KeyError, TypeError) as e:
            raise TrajtuneError(f"{path}:{lineno}: not a Seal-Tools API definition ({e!r})") from None
    return specs


def prepare(ctx: FileContext) -> None:
    """Index the API definitions: tool.jsonl beside the input, else the --tools list."""
    path = ctx.path.parent / "tool.jsonl"
    tools: dict[str, Tool] = {}
    if path.is_file():
        tools = {name: seal_tool(spec) for name, spec in load_catalog(str(path)).items()}
    elif ctx.tools is not None:
        tools = {t["function"]["name"]: t for t in ctx.tools}
    else:
        raise TrajtuneError(
            f"{ctx.path}: Seal-Tools records need the API definitions: put tool.jsonl next to "
            "the file or pass --tools FILE"
        )
    ctx.data["tools"] = tools


def convert(record: Any, rid: str, ctx: FileContext) -> Trajectory:
    """One Seal-Tools record: the query, then its calls."""
    query = need(record, "query", str)
    calling = need(record, "calling", list)
    if not calling:
        raise InvalidRecord("unsupported", "`calling` is empty")
    index: dict[str, Tool] = ctx.data["tools"]
    calls, tools, seen, coerced = [], [], set(), 0
    for i, step in enumerate(calling):
        if not isinstance(step, dict) or not isinstance(step.get("api"), str):
            raise InvalidRecord("unsupported", f"calling[{i}] has no `api` name")
        name = step["api"]
        if name in index and name not in seen:
            seen.add(name)
            tools.append(index[name])
        args = step.get("parameters", {})
        if name in index and isinstance(args, dict):
            props = index[name]["function"]["parameters"]["properties"]
            fixed = {k: coerce(v, props.get(k, {})) for k, v in args.items()}
            coerced += sum(1 for k in args if fixed[k] is not args[k])
            args = fixed
        calls.append({"type": "function", "function": {"name": name, "arguments": args}})
    meta = meta_with_extras(record, _USED)
    meta["responses"] = [step.get("responses") for step in calling]
    if coerced:
        meta["coerced_args"] = coerced
    out = {
        "id": source_id(record, rid),
        "tools": tools,
        "messages": [{"role": "user", "content": query}, {"role": "assistant", "content": None, "tool_calls": calls}],
        "meta": meta,
    }
    return finish(out, NAME, rid)
