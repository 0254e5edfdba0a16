"""Tool-call text formats, both ways: canonical calls -> the text a model emits, and model text -> canonical calls.

Each open model family writes its tool calls in its own syntax. `format_tool_calls(calls, syntax)` produces
exactly that text for canonical calls (arguments are dicts), so the renderer can train on it, and
`parse_tool_calls(text, syntax, tools)` reads a model's output back into canonical calls, plain content, or a
structured `ParseError` (it never raises on model text and never evaluates it: Python-looking syntaxes are read
with `ast` and `ast.literal_eval` only). JSON is written the way Hugging Face's `tojson` filter writes it
(`json.dumps(..., ensure_ascii=False)`: `", "` and `": "` separators, unicode kept), because that is what the
real chat templates put in training text. The syntax names below are the contract other modules use.
Checked against the templates in fixtures/templates (Qwen2.5/3, Hermes-2-Pro, Llama-3.1, Mistral v0.3) and
the real readers: vLLM's tool parsers (hermes; llama3_json reads `; `-separated objects; mistral; granite;
phi4_mini_json reads `functools[...]` while llama.cpp reads `<|tool_call|>...<|/tool_call|>`, so both are
accepted), BFCL's AST decoding (pythonic), and ChatGLM3's PROMPT.md (`tool_call(location="beijing")`).
"""

from __future__ import annotations

import hashlib
import json
import keyword
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from .tool_call_readers import ERROR_KINDS, READERS, ParseError, ReadFailure, check_call  # noqa: F401 (ERROR_KINDS: API)
from .trajectory import Tool, ToolCall, normalise_tools

# name -> one line on what the model emits (also the list the CLI shows).
SYNTAXES: dict[str, str] = {
    "hermes": '<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call> per call (Qwen2.5/3, Hermes)',
    "llama3": '{"name": ..., "parameters": {...}}, several joined by "; " (Llama 3.1-3.3; <|python_tag|> accepted)',
    "mistral": '[TOOL_CALLS] [{"name": ..., "arguments": {...}, "id": "<9 alnum>"}] (v0.3; [TOOL_CALLS]name[ARGS]{...} '
    "accepted)",
    "glm4": "name\\n{json arguments}, one call per assistant turn (GLM-4)",
    "chatglm3": "name\\n```python\\ntool_call(k=v, ...)\\n```, one call per assistant turn (ChatGLM3)",
    "pythonic": "[f(a=1), m.g(b=[1, 2])] (BFCL, Llama 3.2 pythonic)",
    "json_block": '```json\\n{"name": ..., "parameters": {...}}\\n``` per call (the tool-prompt format)',
    "react": "Action: name\\nAction Input: {json}, one action per step (ReAct / AgentInstruct)",
    "granite": '<|tool_call|>[{"name": ..., "arguments": {...}}] (Granite 3.x; <tool_call>[...] accepted)',
    "phi4": '<|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|> (Phi-4-mini; functools[...] accepted)',
}

# Syntaxes whose model emits one call per assistant turn: a parallel call must be rendered as several turns.
ONE_CALL_PER_TURN = frozenset({"glm4", "chatglm3", "react"})

@dataclass
class ParsedOutput:
    """The reading of one model output. `calls` are canonical (ids `call_0`, `call_1`, ...); `content` is the
    text outside the calls, stripped. When `error` is set, `calls` is empty and `content` is the whole text:
    a half-parsed output is never passed on as if it were the model's answer."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    error: ParseError | None = None


def _dumps(obj: Any) -> str:
    """JSON as Hugging Face's `tojson` writes it (ensure_ascii=False, default separators, key order kept)."""
    return json.dumps(obj, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------------
# Formatting: canonical calls -> model text


def mistral_call_id(call_id: str) -> str:
    """Mistral v0.3 requires 9-character alphanumeric ids. Keep one that already is; otherwise derive one
    deterministically from the canonical id, so the same record always renders the same text."""
    if len(call_id) == 9 and call_id.isascii() and call_id.isalnum():
        return call_id
    digest = int.from_bytes(hashlib.sha256(call_id.encode("utf-8")).digest()[:8], "big")
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(alphabet[digest // 62**i % 62] for i in range(9))


def _py_value(value: Any) -> str:
    """A JSON value as a Python literal that `ast.literal_eval` reads back to the same value."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_py_value(k)}: {_py_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_py_value(v) for v in value) + "]"
    if isinstance(value, str):
        # Double quotes, as ChatGLM3's prompt docs and Llama's pythonic examples write them; a JSON string
        # literal is also a valid Python string literal (same escapes), and ensure_ascii=False keeps unicode.
        return json.dumps(value, ensure_ascii=False)
    return repr(value)  # int, float, bool, None: repr is a Python literal


def _plain_identifier(name: str) -> bool:
    """Python reads `name` back as itself: an identifier, not a keyword, and unchanged by the NFKC
    normalisation Python applies to identifiers (`µ` would come back as `μ`)."""
    return (name.isidentifier() and not keyword.iskeyword(name) and name != "__debug__"
            and unicodedata.normalize("NFKC", name) == name)


def _py_kwargs(args: dict[str, Any]) -> str:
    """`k=v, ...`; keys that are not plain identifiers go through `**{...}`, which `ast` still reads."""
    # ASCII keys only as `k=`: the exported chat templates write these calls too (export_prelude.jinja), and Jinja
    # has no isidentifier.
    plain = [f"{k}={_py_value(v)}" for k, v in args.items() if k.isascii() and _plain_identifier(k)]
    odd = {k: v for k, v in args.items() if not (k.isascii() and _plain_identifier(k))}
    return ", ".join(plain + ([f"**{_py_value(odd)}"] if odd else []))


def _py_name(name: str, syntax: str) -> str:
    if not all(_plain_identifier(part) for part in name.split(".")):
        raise ValueError(f"{syntax}: tool name {name!r} is not a (dotted) Python identifier, so it cannot be written "
                         f"as a Python call; rename the tool or use a JSON syntax")
    return name


def format_tool_calls(calls: list[ToolCall], syntax: str) -> str:
    """The text a model emits for `calls` (canonical: arguments are dicts) in `syntax` (a key of SYNTAXES).

    Only the calls: content before them and the end-of-turn token are the renderer's. Raises ValueError for an
    unknown syntax, for several calls in a ONE_CALL_PER_TURN syntax, and for names/arguments a syntax cannot
    express. Example:
    >>> format_tool_calls([{"id": "call_0", "type": "function",
    ...                     "function": {"name": "f", "arguments": {"a": 1}}}], "hermes")
    '<tool_call>\\n{"name": "f", "arguments": {"a": 1}}\\n</tool_call>'
    """
    if syntax not in SYNTAXES:
        raise ValueError(f"unknown tool-call syntax {syntax!r}; choose one of {', '.join(SYNTAXES)}")
    if not calls:
        raise ValueError("format_tool_calls needs at least one call")
    if syntax in ONE_CALL_PER_TURN and len(calls) > 1:
        raise ValueError(f"{syntax} emits one call per assistant turn; got {len(calls)} calls in one turn "
                         f"(render each call as its own assistant turn)")
    fns = [c["function"] for c in calls]
    for fn in fns:
        if not isinstance(fn.get("name"), str) or not fn["name"].strip() or "\n" in fn["name"]:
            raise ValueError(f"tool call name {fn.get('name')!r} must be a non-empty single-line string")
        if not isinstance(fn.get("arguments"), dict):
            raise ValueError(f"tool call {fn.get('name')!r}: arguments must be a dict (canonical record)")

    if syntax == "hermes":
        return "\n".join(f'<tool_call>\n{_dumps({"name": f["name"], "arguments": f["arguments"]})}\n</tool_call>'
                         for f in fns)
    if syntax == "llama3":
        return "; ".join(_dumps({"name": f["name"], "parameters": f["arguments"]}) for f in fns)
    if syntax == "mistral":
        items = [{"name": f["name"], "arguments": f["arguments"], "id": mistral_call_id(c["id"])}
                 for c, f in zip(calls, fns)]
        return "[TOOL_CALLS] [" + ", ".join(_dumps(i) for i in items) + "]"
    if syntax == "glm4":
        return f"{fns[0]['name']}\n{_dumps(fns[0]['arguments'])}"
    if syntax == "chatglm3":
        return f"{fns[0]['name']}\n```python\ntool_call({_py_kwargs(fns[0]['arguments'])})\n```"
    if syntax == "pythonic":
        return "[" + ", ".join(f"{_py_name(f['name'], syntax)}({_py_kwargs(f['arguments'])})" for f in fns) + "]"
    if syntax == "json_block":
        return "\n".join(f"```json\n{_dumps({'name': f['name'], 'parameters': f['arguments']})}\n```" for f in fns)
    if syntax == "react":
        return f"Action: {fns[0]['name']}\nAction Input: {_dumps(fns[0]['arguments'])}"
    body = "[" + ", ".join(_dumps({"name": f["name"], "arguments": f["arguments"]}) for f in fns) + "]"
    if syntax == "granite":
        return "<|tool_call|>" + body
    return "<|tool_call|>" + body + "<|/tool_call|>"  # phi4


def parse_tool_calls(text: str, syntax: str, tools: list[Tool] | None = None) -> ParsedOutput:
    """Read a model's output in `syntax` into content + canonical calls, or a structured error.

    Never raises on model text (only on an unknown `syntax` or malformed `tools`, which are the caller's) and
    never evaluates it. With `tools`, a call to an undefined tool is `unknown_tool` and arguments failing the
    tool's JSON Schema are `bad_arguments`. Example:
    >>> out = parse_tool_calls('Sure.\\n<tool_call>\\n{"name": "f", "arguments": {"a": 1}}\\n</tool_call>', "hermes")
    >>> out.content, out.calls[0]["function"], out.error
    ('Sure.', {'name': 'f', 'arguments': {'a': 1}}, None)
    """
    if syntax not in READERS:
        raise ValueError(f"unknown tool-call syntax {syntax!r}; choose one of {', '.join(SYNTAXES)}")
    specs = None
    if tools is not None:
        specs = {t["function"]["name"]: t["function"]["parameters"] for t in normalise_tools(tools)}
    try:
        content, raw = READERS[syntax](text)
        calls = [check_call(c, specs) for c in raw]
    except ReadFailure as fail:
        return ParsedOutput(content=text, error=fail.error)
    canonical: list[ToolCall] = [{"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
                                 for i, (n, a) in enumerate(calls)]
    return ParsedOutput(content="".join(content).strip(), calls=canonical)
