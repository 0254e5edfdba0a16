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

import ast
import hashlib
import json
import keyword
import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from .trajectory import InvalidRecord, Tool, ToolCall, _check_arguments, _normalise_tools

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

# ParseError kinds, the vocabulary of parse failures (eval reports count them).
ERROR_KINDS: dict[str, str] = {
    "truncated_json": "a JSON body ends before its brackets/strings close (generation cut off)",
    "bad_json": "a call body is not valid JSON (nor, where accepted, a Python literal)",
    "truncated_python": "a Python call expression ends before its brackets/strings close",
    "bad_python": "a Python call expression does not parse, or a value is not a literal",
    "not_a_call": "a call block holds something that is not a call (no name, wrong shape)",
    "unterminated_block": "a call block is opened and never closed",
    "unknown_tool": "a call names a tool that the given tools do not define",
    "bad_arguments": "arguments are not an object, or fail the tool's JSON Schema",
}


@dataclass
class ParseError:
    """What went wrong parsing model text: `kind` from ERROR_KINDS, a readable `message`, and the character
    `offset` into the parsed text where the offending call (or block) starts."""

    kind: str
    message: str
    offset: int

    def __str__(self) -> str:
        return f"{self.kind} at char {self.offset}: {self.message}"


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
    plain = [f"{k}={_py_value(v)}" for k, v in args.items() if _plain_identifier(k)]
    odd = {k: v for k, v in args.items() if not _plain_identifier(k)}
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


# ---------------------------------------------------------------------------------------------------------
# Parsing: model text -> canonical calls. Each syntax reader returns (content pieces, raw calls) and signals a
# failure by raising _Fail, which parse_tool_calls turns into ParsedOutput.error: nothing escapes to the caller.


class _Fail(Exception):
    def __init__(self, kind: str, message: str, offset: int):
        super().__init__(message)
        self.error = ParseError(kind, message, offset)


@dataclass
class _RawCall:
    offset: int  # where the call starts in the text, for error messages
    name: Any
    arguments: Any


_DECODER = json.JSONDecoder()


def _unclosed(s: str, python: bool = False) -> bool:
    """True when `s` ends inside a string or with brackets still open: the mark of a generation cut off."""
    depth, quote, escaped = 0, "", False
    quotes = "\"'" if python else '"'
    for ch in s:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in quotes:
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
            if depth < 0:
                return False  # more closers than openers: malformed, not cut off
    return bool(quote) or depth > 0


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _decode_json(text: str, pos: int, what: str) -> tuple[Any, int]:
    """Decode one JSON value starting at `pos` (after blanks); return it and the index just past it."""
    pos = _skip_ws(text, pos)
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        if _unclosed(text[pos:]):
            raise _Fail("truncated_json", f"{what}: JSON ends before it is complete ({e.msg})", pos) from None
        raise _Fail("bad_json", f"{what}: {e.msg} at char {e.pos}", pos) from None
    except RecursionError:
        raise _Fail("bad_json", f"{what}: JSON nested too deeply", pos) from None


def _load_body(body: str, offset: int, what: str, python_ok: bool = False) -> Any:
    """A whole block body as JSON (or, with python_ok, a Python literal such as a repr'd dict)."""
    stripped = body.strip()
    try:
        return json.loads(stripped)
    except json.JSONDecodeError as e:
        error = e
    except RecursionError:
        raise _Fail("bad_json", f"{what}: JSON nested too deeply", offset) from None
    if python_ok:
        try:
            return ast.literal_eval(stripped)  # literals only: never runs code
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    if _unclosed(stripped, python=python_ok):
        raise _Fail("truncated_json", f"{what}: JSON ends before it is complete ({error.msg})", offset)
    raise _Fail("bad_json", f"{what}: {error.msg} at char {error.pos} of the block", offset)


def _call_from_obj(obj: Any, offset: int, arg_keys: tuple[str, ...], what: str) -> _RawCall:
    """{"name": ..., <one of arg_keys>: {...}} -> _RawCall. Arguments given as a JSON string are decoded."""
    if not isinstance(obj, dict) or "name" not in obj:
        raise _Fail("not_a_call", f"{what}: expected an object with a \"name\", got {_short(obj)}", offset)
    args: Any = {}
    for key in arg_keys:
        if key in obj:
            args = obj[key]
            break
    if isinstance(args, str):  # some models quote the arguments object
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise _Fail("bad_arguments", f"{what}: arguments string is not JSON: {_short(args)}", offset) from None
    return _RawCall(offset, obj["name"], args)


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[:limit] + "..."


def _tagged_blocks(text: str, open_tag: str, close_tag: str, what: str, python_ok: bool,
                   arg_keys: tuple[str, ...]) -> tuple[list[str], list[_RawCall]]:
    """Blocks `open_tag BODY close_tag` holding one call object each (hermes, json_block)."""
    content, calls, pos = [], [], 0
    while (start := text.find(open_tag, pos)) >= 0:
        content.append(text[pos:start])
        body_at = start + len(open_tag)
        # Decode the JSON first so a close tag quoted inside an argument string cannot end the block early.
        try:
            obj, end = _DECODER.raw_decode(text, _skip_ws(text, body_at))
            close_at = _skip_ws(text, end)
            if not text.startswith(close_tag, close_at):
                raise ValueError
            after = close_at + len(close_tag)
        except (json.JSONDecodeError, ValueError, RecursionError):
            close_at = text.find(close_tag, body_at)
            if close_at < 0:
                body = text[body_at:]
                if _unclosed(body.strip(), python=python_ok) or not body.strip():
                    raise _Fail("truncated_json", f"{what} opened here is cut off before its JSON completes",
                                start) from None
                raise _Fail("unterminated_block", f"{what} opened here has no closing {close_tag}", start) from None
            obj = _load_body(text[body_at:close_at], start, what, python_ok)
            after = close_at + len(close_tag)
        calls.append(_call_from_obj(obj, start, arg_keys, what))
        pos = after
    content.append(text[pos:])
    return content, calls


def _calls_from_array(text: str, pos: int, what: str) -> tuple[list[_RawCall], int]:
    """A JSON array of call objects (a single object is accepted too) starting at `pos`."""
    start = _skip_ws(text, pos)
    value, end = _decode_json(text, start, what)
    items = value if isinstance(value, list) else [value]
    return [_call_from_obj(item, start, ("arguments", "parameters"), what) for item in items], end


# --- Python call syntax (pythonic, chatglm3, Llama's builtin <|python_tag|>x.call(...)) ---


def _dotted_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _json_value(value: Any) -> Any:
    """A literal from `ast.literal_eval` as a JSON value; tuples read as lists; anything else is refused."""
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN/inf is not JSON")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError("dict keys must be strings")
        return {k: _json_value(v) for k, v in value.items()}
    raise ValueError(f"{type(value).__name__} is not a JSON value")


def _call_from_ast(node: ast.expr, offset: int, what: str) -> _RawCall:
    if not isinstance(node, ast.Call) or _dotted_name(node.func) is None:
        raise _Fail("not_a_call", f"{what}: expected a function call, got {ast.unparse(node)[:80]!r}", offset)
    name = _dotted_name(node.func)
    if node.args:
        raise _Fail("bad_python", f"{what}: {name}(...) has positional arguments; write them as name=value", offset)
    args: dict[str, Any] = {}
    for kw in node.keywords:
        try:
            value = _json_value(ast.literal_eval(kw.value))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
            raise _Fail("bad_python", f"{what}: argument {kw.arg or '**'} of {name} is not a literal value "
                        f"({e})", offset) from None
        if kw.arg is None:  # **{"odd-key": 1}
            if not isinstance(value, dict):
                raise _Fail("bad_python", f"{what}: ** argument of {name} must be a dict", offset)
            args.update(value)
        else:
            args[kw.arg] = value
    return _RawCall(offset, name, args)


def _parse_python(code: str, offset: int, what: str) -> ast.expr:
    try:
        return ast.parse(code.strip(), mode="eval").body  # parsing only; nothing is evaluated
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        if _unclosed(code.strip(), python=True):
            raise _Fail("truncated_python", f"{what}: the call ends before its brackets/strings close",
                        offset) from None
        raise _Fail("bad_python", f"{what}: not a Python expression ({getattr(e, 'msg', e)})", offset) from None


# --- one reader per syntax: text -> (content pieces, raw calls) ---


def _read_llama3(text: str) -> tuple[list[str], list[_RawCall]]:
    tag = "<|python_tag|>"
    at = text.find(tag)
    if at >= 0:
        content, pos = [text[:at]], at + len(tag)
        if not text[_skip_ws(text, pos):].startswith("{"):
            # Built-in tool: <|python_tag|>brave_search.call(query="...")
            node = _parse_python(text[pos:], at, "<|python_tag|> call")
            call = _call_from_ast(node, at, "<|python_tag|> call")
            call.name = call.name.removesuffix(".call")
            return content, [call]
    else:
        pos = _skip_ws(text, 0)
        if not text.startswith("{", pos):
            return [text], []  # Llama 3 calls are the whole message, so text not opening with { is an answer
        content = []
    calls = []
    while True:
        start = _skip_ws(text, pos)
        obj, pos = _decode_json(text, start, "Llama 3 call")
        calls.append(_call_from_obj(obj, start, ("parameters", "arguments"), "Llama 3 call"))
        nxt = _skip_ws(text, pos)
        if not text.startswith(";", nxt):
            break
        pos = nxt + 1
    content.append(text[pos:])
    return content, calls


def _read_mistral(text: str) -> tuple[list[str], list[_RawCall]]:
    tag = "[TOOL_CALLS]"
    content, calls, pos = [], [], 0
    while (start := text.find(tag, pos)) >= 0:
        content.append(text[pos:start])
        pos = start + len(tag)
        if text.startswith("[", _skip_ws(text, pos)):  # v0.3: [TOOL_CALLS] [{...}, ...]
            found, pos = _calls_from_array(text, pos, "[TOOL_CALLS] list")
            calls += found
            continue
        # Newer tokenizers: [TOOL_CALLS]name[ARGS]{...} (optionally name[CALL_ID]id[ARGS]{...}).
        args_at = text.find("[ARGS]", pos)
        if args_at < 0:
            raise _Fail("not_a_call", "[TOOL_CALLS] is followed by neither a JSON list nor name[ARGS]{...}", start)
        name = text[pos:args_at].split("[CALL_ID]")[0].strip()
        if not name or any(ch.isspace() for ch in name):
            raise _Fail("not_a_call", f"[TOOL_CALLS] names no function before [ARGS]: {text[pos:args_at]!r}", start)
        args_start = args_at + len("[ARGS]")
        args, pos = _decode_json(text, args_start, f"[ARGS] of {name}")
        calls.append(_RawCall(start, name, args))
    content.append(text[pos:])
    return content, calls


def _metadata_line(text: str) -> tuple[str, int] | None:
    """GLM-style turns put the tool name on the first line (the role line's metadata); a plain answer leaves it
    empty, so its text starts with a newline. Returns (name, index after the newline) or None."""
    newline = text.find("\n")
    if newline <= 0:
        return None
    name = text[:newline].strip()
    if not name or "{" in name or "`" in name:
        return None
    return name, newline + 1


def _read_glm4(text: str) -> tuple[list[str], list[_RawCall]]:
    meta = _metadata_line(text)
    if meta is None or not text.startswith("{", _skip_ws(text, meta[1])):
        return [text], []
    name, pos = meta
    args, end = _decode_json(text, pos, f"arguments of {name}")
    if text[end:].strip():
        raise _Fail("bad_json", f"arguments of {name}: extra text after the JSON object: {_short(text[end:].strip())}",
                    end)
    return [], [_RawCall(0, name, args)]


def _read_chatglm3(text: str) -> tuple[list[str], list[_RawCall]]:
    meta = _metadata_line(text)
    if meta is None or not text.startswith("```", _skip_ws(text, meta[1])):
        return [text], []
    name, pos = meta
    fence = _skip_ws(text, pos)
    code_at = text.find("\n", fence)
    # The closing fence is the first ``` after which the code parses: an argument string may itself hold ```.
    closes = [m.start() for m in re.finditer("```", text[code_at + 1:])] if code_at >= 0 else []
    closes = [code_at + 1 + c for c in closes]
    close = next((c for c in closes if _parses(text[code_at + 1:c])), closes[0] if closes else -1)
    if close < 0:
        code = text[code_at + 1:] if code_at >= 0 else ""
        if not code.strip() or _unclosed(code.strip(), python=True):
            raise _Fail("truncated_python", f"tool_call block of {name} is cut off", fence)
        raise _Fail("unterminated_block", f"```python block of {name} has no closing ```", fence)
    node = _parse_python(text[code_at + 1:close], fence, f"tool_call block of {name}")
    if not (isinstance(node, ast.Call) and _dotted_name(node.func) == "tool_call"):
        raise _Fail("not_a_call", f"the ```python block of {name} must hold tool_call(k=v, ...)", fence)
    call = _call_from_ast(node, fence, f"tool_call block of {name}")
    call.name = name
    return [text[close + 3:]], [call]


def _parses(code: str) -> bool:
    try:
        ast.parse(code.strip(), mode="eval")
        return True
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False


def _read_pythonic(text: str) -> tuple[list[str], list[_RawCall]]:
    code = text.strip()
    fenced = re.fullmatch(r"```(?:python|py)?\s*\n(.*?)\n?```", code, flags=re.S)
    if fenced:  # BFCL also strips a code fence around the list
        code = fenced.group(1).strip()
    offset = text.find(code[:1]) if code else 0
    if not code.startswith("["):
        try:
            node = ast.parse(code, mode="eval").body
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return [text], []  # prose, not code
        if not isinstance(node, ast.Call):
            return [text], []
        return [], [_call_from_ast(node, offset, "pythonic call")]
    node = _parse_python(code, offset, "pythonic call list")
    if not isinstance(node, ast.List):
        raise _Fail("not_a_call", "expected a list of calls [f(a=1), ...]", offset)
    return [], [_call_from_ast(item, offset, "pythonic call") for item in node.elts]


def _read_react(text: str) -> tuple[list[str], list[_RawCall]]:
    content, calls, pos = [], [], 0
    action = re.compile(r"^[ \t]*Action[ \t]*:[ \t]*(.*)$", re.M)
    action_input = re.compile(r"[ \t]*Action[ \t]+Input[ \t]*:", re.M)
    while (m := action.search(text, pos)) is not None:
        content.append(text[pos:m.start()])
        name = m.group(1).strip()
        nxt = _skip_ws(text, m.end())
        arg_m = action_input.match(text, nxt)
        if not name or arg_m is None:
            raise _Fail("not_a_call", "an Action line must name a tool and be followed by an Action Input line",
                        m.start())
        at = _skip_ws(text, arg_m.end())
        if not text.startswith("{", at):
            line = text[at:].split("\n", 1)[0]
            raise _Fail("bad_arguments", f"Action Input of {name} must be a JSON object, got {_short(line)!r}", at)
        args, pos = _decode_json(text, at, f"Action Input of {name}")
        calls.append(_RawCall(m.start(), name, args))
    content.append(text[pos:])
    return content, calls


def _read_tag_array(text: str, open_tags: tuple[str, ...], close_tag: str | None) -> tuple[list[str], list[_RawCall]]:
    """`<|tool_call|>[...]` (granite) / `<|tool_call|>[...]<|/tool_call|>` or `functools[...]` (phi4)."""
    content, calls, pos = [], [], 0
    while True:
        hits = [(i, t) for t in open_tags if (i := text.find(t, pos)) >= 0]
        if not hits:
            break
        start, tag = min(hits)
        content.append(text[pos:start])
        found, pos = _calls_from_array(text, start + len(tag.rstrip("[")), f"{tag} list")  # functools[ keeps its [
        calls += found
        if close_tag and tag != "functools[":
            close_at = _skip_ws(text, pos)
            if not text.startswith(close_tag, close_at):
                raise _Fail("unterminated_block", f"{tag} list is not followed by {close_tag}", start)
            pos = close_at + len(close_tag)
    content.append(text[pos:])
    return content, calls


_READERS = {
    "hermes": lambda text: _tagged_blocks(text, "<tool_call>", "</tool_call>", "<tool_call> block", True,
                                          ("arguments", "parameters")),
    "llama3": _read_llama3,
    "mistral": _read_mistral,
    "glm4": _read_glm4,
    "chatglm3": _read_chatglm3,
    "pythonic": _read_pythonic,
    "json_block": lambda text: _tagged_blocks(text, "```json", "```", "```json block", False,
                                              ("parameters", "arguments")),
    "react": _read_react,
    "granite": lambda text: _read_tag_array(text, ("<|tool_call|>", "<tool_call>"), None),  # 3.1+ may write text
    "phi4": lambda text: _read_tag_array(text, ("<|tool_call|>", "functools["), "<|/tool_call|>"),
}


def parse_tool_calls(text: str, syntax: str, tools: list[Tool] | None = None) -> ParsedOutput:
    """Read a model's output in `syntax` into content + canonical calls, or a structured error.

    Never raises on model text (only on an unknown `syntax` or malformed `tools`, which are the caller's) and
    never evaluates it. With `tools`, a call to an undefined tool is `unknown_tool` and arguments failing the
    tool's JSON Schema are `bad_arguments`. Example:
    >>> out = parse_tool_calls('Sure.\\n<tool_call>\\n{"name": "f", "arguments": {"a": 1}}\\n</tool_call>', "hermes")
    >>> out.content, out.calls[0]["function"], out.error
    ('Sure.', {'name': 'f', 'arguments': {'a': 1}}, None)
    """
    if syntax not in _READERS:
        raise ValueError(f"unknown tool-call syntax {syntax!r}; choose one of {', '.join(SYNTAXES)}")
    specs = None
    if tools is not None:
        specs = {t["function"]["name"]: t["function"]["parameters"] for t in _normalise_tools(tools)}
    try:
        content, raw = _READERS[syntax](text)
        calls = [_check_call(c, specs) for c in raw]
    except _Fail as fail:
        return ParsedOutput(content=text, error=fail.error)
    canonical: list[ToolCall] = [{"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
                                 for i, (n, a) in enumerate(calls)]
    return ParsedOutput(content="".join(content).strip(), calls=canonical)


def _check_call(call: _RawCall, specs: dict[str, dict[str, Any]] | None) -> tuple[str, dict[str, Any]]:
    if not isinstance(call.name, str) or not call.name.strip():
        raise _Fail("not_a_call", f"the call's name must be a non-empty string, got {_short(call.name)}", call.offset)
    name = call.name.strip()
    if not isinstance(call.arguments, dict):
        raise _Fail("bad_arguments", f"arguments of {name} must be an object, got {_short(call.arguments)}",
                    call.offset)
    if specs is not None:
        if name not in specs:
            known = ", ".join(sorted(specs)) or "none"
            raise _Fail("unknown_tool", f"{name!r} is not one of the available tools ({known})", call.offset)
        try:
            _check_arguments(call.arguments, specs[name], f"arguments of {name}")
        except InvalidRecord as e:
            raise _Fail("bad_arguments", e.detail, call.offset) from None
    return name, call.arguments
