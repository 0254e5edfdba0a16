"""Reading model text into tool calls, one reader per syntax (the machinery behind `tool_calls.parse_tool_calls`).

Each reader takes the whole model output and returns (content pieces, raw calls), or raises `ReadFailure`
holding a structured `ParseError`; `check_call` then checks a raw call's name and arguments (against the tools'
JSON Schemas when given). Nothing here evaluates model text: Python-looking syntaxes go through `ast` and
`ast.literal_eval` only.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .trajectory import InvalidRecord, check_arguments

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



# ---------------------------------------------------------------------------------------------------------
# Parsing: model text -> canonical calls. Each syntax reader returns (content pieces, raw calls) and signals a
# failure by raising ReadFailure, which parse_tool_calls turns into ParsedOutput.error: nothing escapes to the caller.


class ReadFailure(Exception):
    def __init__(self, kind: str, message: str, offset: int):
        super().__init__(message)
        self.error = ParseError(kind, message, offset)


@dataclass
class RawCall:
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
            raise ReadFailure("truncated_json", f"{what}: JSON ends before it is complete ({e.msg})", pos) from None
        raise ReadFailure("bad_json", f"{what}: {e.msg} at char {e.pos}", pos) from None
    except RecursionError:
        raise ReadFailure("bad_json", f"{what}: JSON nested too deeply", pos) from None


def _load_body(body: str, offset: int, what: str, python_ok: bool = False) -> Any:
    """A whole block body as JSON (or, with python_ok, a Python literal such as a repr'd dict)."""
    stripped = body.strip()
    try:
        return json.loads(stripped)
    except json.JSONDecodeError as e:
        error = e
    except RecursionError:
        raise ReadFailure("bad_json", f"{what}: JSON nested too deeply", offset) from None
    if python_ok:
        try:
            return ast.literal_eval(stripped)  # literals only: never runs code
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    if _unclosed(stripped, python=python_ok):
        raise ReadFailure("truncated_json", f"{what}: JSON ends before it is complete ({error.msg})", offset)
    raise ReadFailure("bad_json", f"{what}: {error.msg} at char {error.pos} of the block", offset)


def _call_from_obj(obj: Any, offset: int, arg_keys: tuple[str, ...], what: str) -> RawCall:
    """{"name": ..., <one of arg_keys>: {...}} -> RawCall. Arguments given as a JSON string are decoded."""
    if not isinstance(obj, dict) or "name" not in obj:
        raise ReadFailure("not_a_call", f"{what}: expected an object with a \"name\", got {_short(obj)}", offset)
    args: Any = {}
    for key in arg_keys:
        if key in obj:
            args = obj[key]
            break
    if isinstance(args, str):  # some models quote the arguments object
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise ReadFailure("bad_arguments", f"{what}: arguments string is not JSON: {_short(args)}", offset) from None
    return RawCall(offset, obj["name"], args)


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[:limit] + "..."


def _tagged_blocks(text: str, open_tag: str, close_tag: str, what: str, python_ok: bool,
                   arg_keys: tuple[str, ...]) -> tuple[list[str], list[RawCall]]:
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
                    raise ReadFailure("truncated_json", f"{what} opened here is cut off before its JSON completes",
                                start) from None
                raise ReadFailure("unterminated_block", f"{what} opened here has no closing {close_tag}", start) from None
            obj = _load_body(text[body_at:close_at], start, what, python_ok)
            after = close_at + len(close_tag)
        calls.append(_call_from_obj(obj, start, arg_keys, what))
        pos = after
    content.append(text[pos:])
    return content, calls


def _calls_from_array(text: str, pos: int, what: str) -> tuple[list[RawCall], int]:
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


def _call_from_ast(node: ast.expr, offset: int, what: str) -> RawCall:
    if not isinstance(node, ast.Call) or _dotted_name(node.func) is None:
        raise ReadFailure("not_a_call", f"{what}: expected a function call, got {ast.unparse(node)[:80]!r}", offset)
    name = _dotted_name(node.func)
    if node.args:
        raise ReadFailure("bad_python", f"{what}: {name}(...) has positional arguments; write them as name=value", offset)
    args: dict[str, Any] = {}
    for kw in node.keywords:
        try:
            value = _json_value(ast.literal_eval(kw.value))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
            raise ReadFailure("bad_python", f"{what}: argument {kw.arg or '**'} of {name} is not a literal value "
                        f"({e})", offset) from None
        if kw.arg is None:  # **{"odd-key": 1}
            if not isinstance(value, dict):
                raise ReadFailure("bad_python", f"{what}: ** argument of {name} must be a dict", offset)
            args.update(value)
        else:
            args[kw.arg] = value
    return RawCall(offset, name, args)


def _parse_python(code: str, offset: int, what: str) -> ast.expr:
    try:
        return ast.parse(code.strip(), mode="eval").body  # parsing only; nothing is evaluated
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        if _unclosed(code.strip(), python=True):
            raise ReadFailure("truncated_python", f"{what}: the call ends before its brackets/strings close",
                        offset) from None
        raise ReadFailure("bad_python", f"{what}: not a Python expression ({getattr(e, 'msg', e)})", offset) from None


# --- one reader per syntax: text -> (content pieces, raw calls) ---


def _read_llama3(text: str) -> tuple[list[str], list[RawCall]]:
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


def _read_mistral(text: str) -> tuple[list[str], list[RawCall]]:
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
            raise ReadFailure("not_a_call", "[TOOL_CALLS] is followed by neither a JSON list nor name[ARGS]{...}", start)
        name = text[pos:args_at].split("[CALL_ID]")[0].strip()
        if not name or any(ch.isspace() for ch in name):
            raise ReadFailure("not_a_call", f"[TOOL_CALLS] names no function before [ARGS]: {text[pos:args_at]!r}", start)
        args_start = args_at + len("[ARGS]")
        args, pos = _decode_json(text, args_start, f"[ARGS] of {name}")
        calls.append(RawCall(start, name, args))
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


def _read_glm4(text: str) -> tuple[list[str], list[RawCall]]:
    meta = _metadata_line(text)
    if meta is None or not text.startswith("{", _skip_ws(text, meta[1])):
        return [text], []
    name, pos = meta
    args, end = _decode_json(text, pos, f"arguments of {name}")
    if text[end:].strip():
        raise ReadFailure("bad_json", f"arguments of {name}: extra text after the JSON object: {_short(text[end:].strip())}",
                    end)
    return [], [RawCall(0, name, args)]


def _read_chatglm3(text: str) -> tuple[list[str], list[RawCall]]:
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
            raise ReadFailure("truncated_python", f"tool_call block of {name} is cut off", fence)
        raise ReadFailure("unterminated_block", f"```python block of {name} has no closing ```", fence)
    node = _parse_python(text[code_at + 1:close], fence, f"tool_call block of {name}")
    if not (isinstance(node, ast.Call) and _dotted_name(node.func) == "tool_call"):
        raise ReadFailure("not_a_call", f"the ```python block of {name} must hold tool_call(k=v, ...)", fence)
    call = _call_from_ast(node, fence, f"tool_call block of {name}")
    call.name = name
    return [text[close + 3:]], [call]


def _parses(code: str) -> bool:
    try:
        ast.parse(code.strip(), mode="eval")
        return True
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False


def _read_pythonic(text: str) -> tuple[list[str], list[RawCall]]:
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
        raise ReadFailure("not_a_call", "expected a list of calls [f(a=1), ...]", offset)
    return [], [_call_from_ast(item, offset, "pythonic call") for item in node.elts]


def _read_react(text: str) -> tuple[list[str], list[RawCall]]:
    content, calls, pos = [], [], 0
    action = re.compile(r"^[ \t]*Action[ \t]*:[ \t]*(.*)$", re.M)
    action_input = re.compile(r"[ \t]*Action[ \t]+Input[ \t]*:", re.M)
    while (m := action.search(text, pos)) is not None:
        content.append(text[pos:m.start()])
        name = m.group(1).strip()
        nxt = _skip_ws(text, m.end())
        arg_m = action_input.match(text, nxt)
        if not name or arg_m is None:
            raise ReadFailure("not_a_call", "an Action line must name a tool and be followed by an Action Input line",
                        m.start())
        at = _skip_ws(text, arg_m.end())
        if not text.startswith("{", at):
            line = text[at:].split("\n", 1)[0]
            raise ReadFailure("bad_arguments", f"Action Input of {name} must be a JSON object, got {_short(line)!r}", at)
        args, pos = _decode_json(text, at, f"Action Input of {name}")
        calls.append(RawCall(m.start(), name, args))
    content.append(text[pos:])
    return content, calls


def _read_tag_array(text: str, open_tags: tuple[str, ...], close_tag: str | None) -> tuple[list[str], list[RawCall]]:
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
                raise ReadFailure("unterminated_block", f"{tag} list is not followed by {close_tag}", start)
            pos = close_at + len(close_tag)
    content.append(text[pos:])
    return content, calls


READERS = {
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


def check_call(call: RawCall, specs: dict[str, dict[str, Any]] | None) -> tuple[str, dict[str, Any]]:
    if not isinstance(call.name, str) or not call.name.strip():
        raise ReadFailure("not_a_call", f"the call's name must be a non-empty string, got {_short(call.name)}", call.offset)
    name = call.name.strip()
    if not isinstance(call.arguments, dict):
        raise ReadFailure("bad_arguments", f"arguments of {name} must be an object, got {_short(call.arguments)}",
                    call.offset)
    if specs is not None:
        if name not in specs:
            known = ", ".join(sorted(specs)) or "none"
            raise ReadFailure("unknown_tool", f"{name!r} is not one of the available tools ({known})", call.offset)
        try:
            check_arguments(call.arguments, specs[name], f"arguments of {name}")
        except InvalidRecord as e:
            raise ReadFailure("bad_arguments", e.detail, call.offset) from None
    return name, call.arguments
