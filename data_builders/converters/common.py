"""Helpers shared by the format converters: the per-file context, loose JSON, type names, tool-call text.

Public datasets spell the same things many ways: arguments as a JSON string or as a Python literal
(`{'a': True}`), parameter types as `"str"`, `"List[int]"`, `"float, optional"` or BFCL's `"dict"`, a call as
`{"name", "arguments"}` or `{"name", "parameters"}`. Each helper here turns one of those spellings into the
canonical one or raises `InvalidRecord` with the reason code the ledger will count.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..trajectory import InvalidRecord, Tool, Trajectory, validate_record


@dataclass
class FileContext:
    """What a converter may need beyond the record: its file, the `--tools` list, data loaded once per file."""

    path: Path
    tools: list[Tool] | None = None  # from --tools, already normalised to OpenAI tools
    data: dict[str, Any] = field(default_factory=dict)  # per-format, filled by the module's `prepare`


def finish(record: dict[str, Any], source: str, rid: str, keep_empty_meta: bool = False) -> Trajectory:
    """Give a converted record its id (the source's own if it has one) and source, then validate it.

    An empty `meta` is dropped unless `keep_empty_meta` (canonical input that had one keeps it: round trips).
    """
    out: dict[str, Any] = {"id": rid, "source": source}
    out.update(record)
    if out.get("id") in (None, ""):
        out["id"] = rid
    if not out.get("meta") and not keep_empty_meta:
        out.pop("meta", None)
    return validate_record(out)


def finish_chat(record: dict[str, Any], rid: str, messages: list[dict[str, Any]], used: frozenset[str] | set[str],
                source: str) -> Trajectory:
    """`finish` for the chat-shaped formats (ShareGPT, ChatGLM3, LLaMA-Factory v1): the record's own id and
    `tools` specs, the converted `messages`, and every key not in `used` kept in `meta`."""
    out = {
        "id": source_id(record, rid),
        "tools": tools_from_specs(record.get("tools"), "`tools`"),
        "messages": messages,
        "meta": meta_with_extras(record, used),
    }
    return finish(out, source, rid)


def source_id(record: dict[str, Any], rid: str, *keys: str) -> str:
    """The record's own id under the first of `keys` present (stringified), else the `<stem>:<line>` id."""
    for key in keys or ("id",):
        value = record.get(key)
        if value not in (None, ""):
            return str(value)
    return rid


def loose_json(text: Any, what: str, reason: str = "unsupported") -> Any:
    """Parse JSON, falling back to a Python literal (`True`, single quotes), as Hermes and glaive data use.

    Non-strings pass through. Raises InvalidRecord(reason) naming `what` when neither parser accepts it.
    """
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        json_error = f"{e.msg} at char {e.pos}"
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise InvalidRecord(reason, f"{what} is neither JSON nor a Python literal ({json_error})") from None


def need(record: Any, key: str, kind: type | tuple[type, ...], what: str = "") -> Any:
    """`record[key]` if it exists and has type `kind`, else InvalidRecord('unsupported') saying what was found."""
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, kind):
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        found = "missing" if value is None else f"a {type(value).__name__}"
        raise InvalidRecord("unsupported", f"{what or key!s}: expected {names}, found {found}")
    return value


# ---------------------------------------------------------------------------------------------------------
# Parameter types and schemas

# Python-ish and BFCL type names -> JSON Schema; None means "no type constraint".
_TYPE_NAMES: dict[str, str | None] = {
    "str": "string", "string": "string", "text": "string", "date": "string",
    "int": "integer", "integer": "integer", "long": "integer",
    "float": "number", "number": "number", "double": "number", "decimal": "number",
    "bool": "boolean", "boolean": "boolean",
    "list": "array", "array": "array", "tuple": "array", "set": "array", "sequence": "array",
    "dict": "object", "object": "object", "mapping": "object",
    "null": "null", "none": "null", "any": None,
}  # fmt: skip
JSON_TYPES = {"string", "integer", "number", "boolean", "array", "object", "null"}


def type_schema(type_name: Any) -> tuple[dict[str, Any], bool]:
    """A Python-style type name as a JSON Schema, and whether it was marked optional.

    >>> type_schema("List[int], optional")
    ({'type': 'array', 'items': {'type': 'integer'}}, True)
    Unknown names (`callable`, `Union[...]`) give an unconstrained schema rather than a wrong one.
    """
    if not isinstance(type_name, str):
        return {}, False
    text = type_name.strip()
    optional = False
    if ", optional" in text.lower():
        optional = True
        text = text[: text.lower().index(", optional")].strip()
    if text.lower().startswith("optional[") and text.endswith("]"):
        optional = True
        text = text[len("optional[") : -1].strip()
    head, _, inner = text.partition("[")
    json_type = _TYPE_NAMES.get(head.strip().lower())
    if json_type is None:
        return {}, optional
    schema: dict[str, Any] = {"type": json_type}
    if json_type == "array" and inner.endswith("]") and "," not in inner:
        item, _ = type_schema(inner[:-1])
        if item:
            schema["items"] = item
    return schema, optional


def fix_schema(schema: Any) -> Any:
    """Rewrite BFCL/ToolACE/Seal-Tools type names into JSON Schema, recursively (`dict` -> `object`, ...).

    Returns a new object; the input is untouched. A `type` that is not a known name is dropped (no constraint)
    rather than kept, since jsonschema rejects the whole schema for one bad type name.
    """
    if isinstance(schema, list):
        return [fix_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            fixed = value if value in JSON_TYPES else _TYPE_NAMES.get(value.lower())
            if fixed is not None:
                out[key] = fixed
        elif key in ("properties", "patternProperties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: fix_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "not", "prefixItems"):
            out[key] = fix_schema(value)
        else:
            out[key] = value
    if out.get("required") is None:
        out.pop("required", None)
    return out


def function_tool(name: str, description: str | None, parameters: dict[str, Any]) -> Tool:
    """An OpenAI tool entry."""
    fn: dict[str, Any] = {"name": name}
    if description:
        fn["description"] = description
    fn["parameters"] = parameters
    return {"type": "function", "function": fn}  # type: ignore[typeddict-item]


def tools_from_specs(specs: Any, what: str = "tools") -> list[Tool]:
    """OpenAI tools from a list (or JSON string of a list) of tools or bare function specs, schemas fixed.

    A JSON string is parsed once per distinct string (datasets repeat a few tool sets many times), so the
    returned tools may be shared between records: treat them as read-only.
    """
    if isinstance(specs, str):
        return _tools_from_text(specs, what)
    if specs in (None, ""):
        return []
    if isinstance(specs, dict):
        specs = [specs]
    if not isinstance(specs, list):
        raise InvalidRecord("bad_tools", f"{what} must be a list, got {type(specs).__name__}")
    tools: list[Tool] = []
    for i, spec in enumerate(specs):
        fn = spec.get("function") if isinstance(spec, dict) and isinstance(spec.get("function"), dict) else spec
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRecord("bad_tools", f"{what}[{i}] has no function name")
        params = fn.get("parameters")
        # ToolACE puts `"required": null` beside the parameters; it means nothing, so drop it.
        fixed = {k: v for k, v in fn.items() if not (k == "required" and v is None)}
        if params is None:
            fixed["parameters"] = {"type": "object", "properties": {}}
        elif isinstance(params, dict):
            fixed["parameters"] = fix_schema(params)
        tools.append({"type": "function", "function": fixed})  # type: ignore[typeddict-item]
    return tools


@lru_cache(maxsize=256)
def _tools_from_text(text: str, what: str) -> list[Tool]:
    return tools_from_specs(loose_json(text, what, "bad_tools"), what)


# ---------------------------------------------------------------------------------------------------------
# Tool calls written as text


def call_from_obj(obj: Any, what: str) -> dict[str, Any]:
    """A canonical-shaped call from `{"name", "arguments"|"parameters"}` (arguments may still be a string)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise InvalidRecord("unsupported", f"{what}: a tool call needs a string `name`")
    args = obj.get("arguments", obj.get("parameters", {}))
    return {"type": "function", "function": {"name": obj["name"], "arguments": args}}


def calls_from_text(text: str, what: str) -> list[dict[str, Any]]:
    """Calls from a JSON (or Python-literal) object or list of `{"name", "arguments"}` objects."""
    obj = loose_json(text, what)
    objs = obj if isinstance(obj, list) else [obj]
    if not objs:
        raise InvalidRecord("unsupported", f"{what}: empty list of tool calls")
    return [call_from_obj(o, f"{what}[{i}]") for i, o in enumerate(objs)]


def tool_content(value: Any) -> str:
    """A tool result as message content: strings stay as they are, anything else becomes compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def meta_with_extras(record: dict[str, Any], used: set[str] | frozenset[str]) -> dict[str, Any]:
    """The record's `meta` plus every top-level key the converter did not use, so nothing is dropped silently."""
    meta = dict(record["meta"]) if isinstance(record.get("meta"), dict) else {}
    for key, value in record.items():
        if key not in used and key != "meta" and not key.startswith("_"):
            meta.setdefault(key, value)
    return meta


def text_of_parts(content: Any, what: str) -> Any:
    """Content given as typed parts (`[{"type": "text", "text"|"value": ...}]`) joined into one string.

    Strings and None pass through; a non-text part (an image) is unsupported rather than silently dropped.
    """
    if not isinstance(content, list):
        return content
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise InvalidRecord("unsupported", f"{what}.content[{j}] is a {kind!r} part; only text parts convert")
        texts.append(part.get("text", part.get("value", "")))
    return "".join(texts)
