"""ToolACE (Team-ACE) in its ShareGPT conversion -> canonical.

The tools are not in the `tools` column (it is "[]") but in the `system` prompt, as a JSON list after "Here is a
list of functions in JSON format that you can invoke:", with BFCL-style types (`"type": "dict"`). The common
conversion script also turned a call like `Market Trends API(...)` into the name `API` (the last word). A call
name that is not a tool but is the last word of exactly one tool name (or of several, exactly one of which has
parameters that fit the call's arguments) is mapped back to that tool, and the mapping is
recorded in `meta.renamed_calls`; anything else stays as it is and fails validation (undefined_tool).
"""

from __future__ import annotations

import json
from typing import Any

from ..trajectory import InvalidRecord, Trajectory
from . import sharegpt
from .common import FileContext, finish, meta_with_extras, source_id, tools_from_specs

NAME = "toolace"
MARKER = "Here is a list of functions in JSON format that you can invoke:"
_USED = frozenset({"id", "conversations", "tools", "system"})


def looks_like(record: dict[str, Any]) -> bool:
    return sharegpt.looks_like(record) and MARKER in str(record.get("system", ""))


def tools_in_system(system: str) -> list[Any]:
    """The function list embedded in a ToolACE system prompt ([] if there is none)."""
    at = system.find(MARKER)
    if at < 0:
        return []
    start = system.find("[", at)
    try:
        specs, _ = json.JSONDecoder().raw_decode(system, start)
    except (json.JSONDecodeError, ValueError) as e:
        raise InvalidRecord("bad_tools", f"the function list in `system` is not valid JSON ({e})") from None
    return specs


def _fits(args: Any, params: dict[str, Any]) -> bool:
    """Whether call arguments name only known parameters and include every required one."""
    if not isinstance(args, dict):
        return False
    known = set(params.get("properties") or {})
    return set(args) <= known and set(params.get("required") or []) <= set(args)


def convert(record: Any, rid: str, ctx: FileContext | None = None) -> Trajectory:
    """One ToolACE record; tools come from the system prompt, lossy call names are mapped back where unique."""
    messages = sharegpt.convert_turns(sharegpt.conversations(record))
    system = record.get("system") if isinstance(record.get("system"), str) else ""
    tools = tools_from_specs(record.get("tools"), "`tools`") or tools_from_specs(tools_in_system(system), "`system`")
    if system:
        messages.insert(0, {"role": "system", "content": system})
    by_name = {t["function"]["name"]: t["function"].get("parameters", {}) for t in tools}
    names = set(by_name)
    renamed: list[list[str]] = []  # [name in the data, tool it maps to], per call
    for m in messages:
        for call in m.get("tool_calls") or ():
            name = call["function"]["name"]
            if name in names:
                continue
            matches = [n for n in names if n.split()[-1:] == [name]]
            if len(matches) > 1:  # several tools end in that word: keep those whose parameters fit the call
                matches = [n for n in matches if _fits(call["function"]["arguments"], by_name[n])]
            if len(matches) == 1:
                call["function"]["name"] = matches[0]
                renamed.append([name, matches[0]])
    meta = meta_with_extras(record, _USED)
    if renamed:
        meta["renamed_calls"] = renamed
    out = {"id": source_id(record, rid), "tools": tools, "messages": messages, "meta": meta}
    return finish(out, NAME, rid)
