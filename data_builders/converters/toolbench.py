"""ToolBench (OpenBMB) -> canonical: DFS answer files and instruction (query) files.

An answer file is `{"answer_generation": {function, train_messages, final_answer, query, ...}}`; its
`train_messages` are growing prefixes of one trajectory in the legacy OpenAI function-calling shape, so the
longest is the trajectory and `function` (with the `Finish` function) is the tool list. A query record is
`{query, api_list, query_id, "relevant APIs"}`: it becomes the user turn alone, with tools named as ToolBench
names them (`<api>_for_<tool>`, standardised).
"""

from __future__ import annotations

import re
from typing import Any

from ..trajectory import InvalidRecord, Tool, Trajectory
from . import openai
from .common import (
    FileContext,
    finish,
    function_tool,
    meta_with_extras,
    need,
    source_id,
    type_schema,
)

NAME = "toolbench"
_USED_ANSWER = frozenset({"function", "train_messages", "query"})
_USED_QUERY = frozenset({"query", "api_list", "query_id"})


def looks_like(record: dict[str, Any]) -> bool:
    return isinstance(record.get("answer_generation"), dict) or ("api_list" in record and "query" in record)


def standardize(name: str) -> str:
    """ToolBench's `standardize`: non-word characters to `_`, runs collapsed, lower case, no leading digit."""
    name = re.sub(r"[^\u4e00-\u9fa5a-zA-Z0-9_]", "_", name)
    name = re.sub(r"_+", "_", name).lower().strip("_")
    return f"get_{name}" if name[:1].isdigit() else name


def api_tool(api: dict[str, Any]) -> Tool:
    """One `api_list` entry as an OpenAI tool."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for group in ("required_parameters", "optional_parameters"):
        for p in api.get(group) or []:
            schema, _ = type_schema(str(p.get("type", "")))
            if p.get("description"):
                schema["description"] = p["description"]
            properties[p["name"]] = schema
            if group == "required_parameters":
                required.append(p["name"])
    params: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        params["required"] = required
    name = f"{standardize(api['api_name'])}_for_{standardize(api['tool_name'])}"
    return function_tool(name, (api.get("api_description") or "").strip(), params)


def convert(record: Any, rid: str, ctx: FileContext | None = None) -> Trajectory:
    """One ToolBench answer or query record as a validated canonical trajectory."""
    if "answer_generation" in record:
        answer = need(record, "answer_generation", dict)
        prefixes = need(answer, "train_messages", list, "answer_generation.train_messages")
        if not prefixes or not all(isinstance(p, list) for p in prefixes):
            raise InvalidRecord("no_messages", "answer_generation.train_messages has no message lists")
        messages = max(prefixes, key=len)
        tools = [
            {"type": "function", "function": f} for f in need(answer, "function", list, "answer_generation.function")
        ]
        legacy = {"messages": messages, "tools": tools, "meta": meta_with_extras(answer, _USED_ANSWER)}
        record_out = openai.convert(legacy, rid)
        record_out["source"] = NAME
        return record_out
    query = need(record, "query", str)
    try:
        tools = [api_tool(api) for api in need(record, "api_list", list)]
    except (KeyError, TypeError, AttributeError) as e:
        raise InvalidRecord("bad_tools", f"api_list entry without api_name/tool_name/parameter name ({e!r})") from None
    out = {
        "id": source_id(record, rid, "query_id", "id"),
        "tools": tools,
        "messages": [{"role": "user", "content": query}],
        "meta": meta_with_extras(record, _USED_QUERY),
    }
    return finish(out, NAME, rid)
