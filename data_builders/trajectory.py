"""The canonical trajectory: typed records, validation, and streaming JSONL I/O.

A trajectory is one JSON object per line in the OpenAI chat format (tools, tool_calls, the tool role), see
DESIGN.md. Records are plain dicts typed with `TypedDict`, so reading and writing JSON costs nothing extra.
`validate_record` is the single gate every record passes: it normalises (arguments given as a JSON string
become the object; missing tool-call ids are assigned and tool results answer the open calls in order) and
raises `InvalidRecord` with a reason code and a precise message. `Ledger` keeps the books: every record read
is either kept or quarantined with its file, line and reason, and the counts reconcile.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, TypedDict

import numpy as np

ROLES = ("system", "user", "assistant", "tool")


class FunctionSpec(TypedDict, total=False):
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON Schema of type "object"


class Tool(TypedDict):
    type: str  # always "function"
    function: FunctionSpec


class CallFunction(TypedDict):
    name: str
    arguments: dict[str, Any]  # always an object in canonical records; templates may want it as a string


class ToolCall(TypedDict):
    id: str
    type: str  # always "function"
    function: CallFunction


class Message(TypedDict, total=False):
    role: str  # system | user | assistant | tool
    content: str | None  # None only for an assistant message that only calls tools
    tool_calls: list[ToolCall]  # assistant only
    tool_call_id: str  # tool only: the call it answers
    name: str  # tool only: the function that produced it
    loss: bool  # trained or not; default: assistant messages are trained, all else is not
    reasoning_content: str  # assistant only: the thought the model writes before its answer or calls


class Trajectory(TypedDict, total=False):
    id: str
    source: str
    tools: list[Tool]
    messages: list[Message]
    meta: dict[str, Any]


# Reason codes, the vocabulary of every quarantine file and summary.
REASONS = {
    "bad_utf8": "the line is not valid UTF-8",
    "bad_json": "the line is not valid JSON",
    "not_object": "the record is not a JSON object",
    "no_messages": "`messages` is missing or empty",
    "bad_role": "a message has a role other than system/user/assistant/tool",
    "bad_message": "a message is malformed (content, tool_calls, loss or reasoning_content of the wrong type)",
    "bad_tools": "`tools` is malformed",
    "orphan_tool_result": "a tool message answers no earlier tool call",
    "undefined_tool": "an assistant calls a tool that `tools` does not define",
    "args_not_object": "tool-call arguments are not a JSON object",
    "args_schema": "tool-call arguments fail the tool's JSON Schema",
    "unsupported": "the record has a shape the converter does not know",
}


class InvalidRecord(ValueError):
    """A record that cannot be kept: `reason` is a code from REASONS, `detail` says exactly what and where."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def message_trained(message: Message) -> bool:
    """The `loss` rule of DESIGN.md: an explicit flag wins; otherwise only assistant messages train."""
    loss = message.get("loss")
    return message["role"] == "assistant" if loss is None else bool(loss)


# ---------------------------------------------------------------------------------------------------------
# Validation


@lru_cache(maxsize=4096)
def _schema_validator(schema_json: str):
    """One compiled validator per distinct parameters schema (datasets repeat a few tool sets many times)."""
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def normalise_tools(tools: Any, validators: dict[str, Any] | None = None) -> list[Tool]:
    """Wrap bare specs, check each parameters schema; fill `validators` (name -> compiled validator) if given."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRecord("bad_tools", f"`tools` must be a list, got {type(tools).__name__}")
    out: list[Tool] = []
    for i, tool in enumerate(tools):
        # A bare function spec ({"name", "parameters"}) is common; wrap it rather than reject it.
        fn = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRecord("bad_tools", f"tools[{i}] has no function name")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise InvalidRecord("bad_tools", f"tools[{i}] ({fn['name']}): parameters must be a JSON Schema object")
        try:
            validator = _schema_validator(json.dumps(params, sort_keys=True))
        except Exception as e:  # jsonschema.SchemaError, or an unhashable oddity
            msg = getattr(e, "message", str(e))
            raise InvalidRecord("bad_tools", f"tools[{i}] ({fn['name']}): parameters is not a valid JSON Schema: {msg}") from None
        out.append({"type": "function", "function": {**fn, "parameters": params}})
        if validators is not None:
            validators[fn["name"]] = validator
    return out


def _normalise_arguments(args: Any, where: str) -> dict[str, Any]:
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise InvalidRecord("args_not_object", f"{where}: arguments string is not JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(args, dict):
        raise InvalidRecord("args_not_object", f"{where}: arguments must be a JSON object, got {type(args).__name__}")
    return args


def check_arguments(args: dict[str, Any], params: dict[str, Any], where: str, validator=None) -> None:
    if validator is None:
        validator = _schema_validator(json.dumps(params, sort_keys=True))
    error = next(iter(sorted(validator.iter_errors(args), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise InvalidRecord("args_schema", f"{where}: at {path}: {error.message}")


def validate_record(obj: Any) -> Trajectory:
    """Check one record against the canonical rules and return it normalised (a new dict; `obj` is untouched).

    Raises InvalidRecord naming the message index and what is wrong. Example:
    >>> validate_record({"messages": [{"role": "user", "content": "hi"}]})["messages"][0]["role"]
    'user'
    """
    if not isinstance(obj, dict):
        raise InvalidRecord("not_object", f"expected a JSON object, got {type(obj).__name__}")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRecord("no_messages", "`messages` is missing" if messages is None else "`messages` must be a non-empty list")
    validators: dict[str, Any] = {}  # name -> compiled validator, keyed once per tool (a json.dumps each)
    tools = normalise_tools(obj.get("tools"), validators)
    params_by_name = {t["function"]["name"]: t["function"]["parameters"] for t in tools}

    seen_ids: set[str] = set()
    open_ids: list[str] = []  # calls not yet answered, in call order
    next_id = 0
    out_messages: list[Message] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise InvalidRecord("bad_message", f"{where} is not an object")
        role = m.get("role")
        if role not in ROLES:
            raise InvalidRecord("bad_role", f"{where} has role {role!r}; expected one of {', '.join(ROLES)}")
        msg: Message = dict(m)  # type: ignore[assignment]
        content = m.get("content")
        if "loss" in m and m["loss"] is not None and not isinstance(m["loss"], bool):
            raise InvalidRecord("bad_message", f"{where}: loss must be true, false or absent, got {m['loss']!r}")
        if msg.get("loss", 0) is None:
            del msg["loss"]
        if msg.get("reasoning_content", "") is None:
            del msg["reasoning_content"]
        elif "reasoning_content" in msg and (role != "assistant" or not isinstance(msg["reasoning_content"], str)):
            raise InvalidRecord("bad_message", f"{where} ({role}): reasoning_content must be a string on an assistant "
                                f"message, got {type(msg['reasoning_content']).__name__}")
        if role == "assistant" and m.get("tool_calls"):
            if content is not None and not isinstance(content, str):
                raise InvalidRecord("bad_message", f"{where}: content must be a string or null")
            if not isinstance(m["tool_calls"], list):
                raise InvalidRecord("bad_message", f"{where}: tool_calls must be a list")
            calls: list[ToolCall] = []
            for j, call in enumerate(m["tool_calls"]):
                cwhere = f"{where}.tool_calls[{j}]"
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise InvalidRecord("bad_message", f"{cwhere} has no function name")
                name = fn["name"]
                if name not in params_by_name:
                    known = ", ".join(sorted(params_by_name)) or "none"
                    raise InvalidRecord("undefined_tool", f"{cwhere} calls {name!r}, which `tools` does not define (defined: {known})")
                args = _normalise_arguments(fn.get("arguments", {}), f"{cwhere} ({name})")
                check_arguments(args, params_by_name[name], f"{cwhere} ({name})", validators[name])
                call_id = call.get("id")
                if not isinstance(call_id, str) or not call_id:
                    while f"call_{next_id}" in seen_ids:
                        next_id += 1
                    call_id = f"call_{next_id}"
                seen_ids.add(call_id)
                open_ids.append(call_id)
                calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": args}})
            msg["tool_calls"] = calls
        else:
            msg.pop("tool_calls", None)
            if not isinstance(content, str):
                raise InvalidRecord("bad_message", f"{where} ({role}): content must be a string, got {type(content).__name__}")
        if role == "tool":
            call_id = m.get("tool_call_id")
            if call_id is None:
                if not open_ids:
                    raise InvalidRecord("orphan_tool_result", f"{where}: tool result with no id and no open tool call to answer")
                call_id = open_ids.pop(0)
            elif call_id not in seen_ids:
                raise InvalidRecord("orphan_tool_result", f"{where}: tool_call_id {call_id!r} matches no earlier tool call")
            elif call_id in open_ids:
                open_ids.remove(call_id)
            msg["tool_call_id"] = call_id
            if not msg.get("name"):
                msg["name"] = _call_name(out_messages, call_id)
        out_messages.append(msg)

    record: Trajectory = {k: v for k, v in obj.items() if k not in ("messages", "tools")}  # type: ignore[assignment]
    if "id" in record and not isinstance(record["id"], str):
        record["id"] = str(record["id"])
    if "meta" in record and not isinstance(record["meta"], dict):
        raise InvalidRecord("not_object", "`meta` must be an object")
    record["tools"] = tools
    record["messages"] = out_messages
    return record


def _call_name(messages: list[Message], call_id: str) -> str:
    for m in reversed(messages):
        for call in m.get("tool_calls") or ():
            if call["id"] == call_id:
                return call["function"]["name"]
    return ""


# ---------------------------------------------------------------------------------------------------------
# Streaming I/O


def iter_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw bytes) for each non-blank line. Constant memory for any file size."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                yield lineno, raw.rstrip(b"\r\n")


_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True  # what bytes.strip() removes


def line_chunks(path: str | Path, target: int = 1 << 22) -> Iterator[tuple[int, int, int]]:
    """Cut `path` into runs of whole lines of about `target` bytes: (start, end, number of the run's first line).

    Each run ends right after a newline (the last one may end at the end of the file), so no line is split; a line
    longer than `target` makes a longer run. One sequential read, counting newlines at memory speed.
    """
    with open(path, "rb") as f:
        start, lineno, carry = 0, 1, b""  # file offset of carry[0], number of the line carry starts
        while True:
            block = f.read(target)
            buf = carry + block
            if not block:
                if buf:
                    yield start, start + len(buf), lineno
                return
            cut = buf.rfind(b"\n") + 1
            if cut == 0:  # a line longer than the block: read on
                carry = buf
                continue
            yield start, start + cut, lineno
            lineno += buf.count(b"\n", 0, cut)
            start += cut
            carry = buf[cut:]


def split_lines(buf: bytes, first_line: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-blank lines of a run of whole lines (see `line_chunks`), vectorised: (line numbers, starts, ends).

    `buf[start:end].rstrip(b"\\r\\n")` is what `iter_lines` yields for that line; line numbers count on from
    `first_line`, the number of the run's first line.
    """
    if not buf:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    data = np.frombuffer(buf, dtype=np.uint8)
    ends = np.flatnonzero(data == 10)  # each newline ends a line (it belongs to that line's range)
    if not len(ends) or ends[-1] != len(buf) - 1:
        ends = np.append(ends, len(buf) - 1)  # the file's last line has no newline
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    stops = ends + 1  # exclusive, the newline included
    keep = ~_WHITESPACE[data[starts]]  # a line that starts with a non-whitespace byte is not blank
    for i in np.flatnonzero(~keep):  # the few others (empty, indented): look at the whole line
        keep[i] = bool(buf[starts[i]:stops[i]].strip())
    numbers = first_line + np.arange(len(ends), dtype=np.int64)
    return numbers[keep], starts[keep], stops[keep]


def parse_line(raw: bytes) -> Any:
    """Decode one JSONL line; raises InvalidRecord (bad_utf8 / bad_json / not_object)."""
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (editors on Windows write one on line 1)
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRecord("bad_utf8", f"invalid byte 0x{raw[e.start]:02x} at byte {e.start}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidRecord("bad_json", f"{e.msg} at column {e.colno}") from None
    if not isinstance(obj, dict):
        raise InvalidRecord("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def read_trajectories(path: str | Path, ledger: Ledger | None = None) -> Iterator[Trajectory]:
    """Stream valid canonical records from a JSONL file. Invalid lines go to `ledger` (or raise if None)."""
    for lineno, raw in iter_lines(path):
        try:
            record = validate_record(parse_line(raw))
        except InvalidRecord as e:
            if ledger is None:
                raise InvalidRecord(e.reason, f"{path}:{lineno}: {e.detail}") from None
            ledger.reject(str(path), lineno, e, raw)
            continue
        if ledger is not None:
            ledger.keep()
        yield record


def dumps(record: Trajectory) -> str:
    """One JSONL line (no newline). Unicode stays readable; key order is the record's own."""
    return json.dumps(record, ensure_ascii=False)


def write_trajectories(records, path: str | Path) -> int:
    """Write records as JSONL, one per line; returns the count. Streams: `records` may be any iterable."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(dumps(record) + "\n")
            n += 1
    return n


@dataclass
class Ledger:
    """The books of one pass over input files: read = kept + quarantined, per reason, nothing unaccounted.

    Rejected records are written to `quarantine` (if given) as {"file", "line", "reason", "detail", "raw"},
    where `raw` is the original line (or record) as text.
    """

    quarantine: IO[str] | None = None
    read: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)

    def keep(self) -> None:
        self.read += 1
        self.kept += 1

    def reject(self, file: str, line: int, error: InvalidRecord, raw: bytes | str | Any) -> None:
        self.read += 1
        self.rejected[error.reason] += 1
        if self.quarantine is not None:
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8", errors="replace")
            elif not isinstance(raw, str):
                raw = json.dumps(raw, ensure_ascii=False)
            entry = {"file": file, "line": line, "reason": error.reason, "detail": error.detail, "raw": raw}
            self.quarantine.write(json.dumps(entry, ensure_ascii=False) + "\n")

    @property
    def quarantined(self) -> int:
        return sum(self.rejected.values())

    def summary(self) -> dict[str, Any]:
        assert self.read == self.kept + self.quarantined, "ledger does not reconcile"
        return {"read": self.read, "kept": self.kept, "quarantined": self.quarantined, "by_reason": dict(self.rejected)}
