"""Records out of input files, each with the line it starts on: JSONL streamed, JSON documents loaded whole.

JSONL (and `.json` files whose first line is a whole object, as BFCL's are) is read line by line in constant
memory. A JSON document is an array of records, one record, or a wrapper object holding the records in a list
(`{"_source": ..., "samples": [...]}`); arrays are walked with `JSONDecoder.raw_decode` so each element knows
the line it starts on. A line or element that cannot be read comes out as an `InvalidRecord` in place of the
record: the caller quarantines it, nothing is skipped silently. After a syntax error inside a JSON document
the rest of the document cannot be split into records; the error says so and the walk stops.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..trajectory import InvalidRecord, iter_lines, parse_line

_WS = " \t\r\n"
_decoder = json.JSONDecoder()


def iter_records(path: Path, is_record: Callable[[dict[str, Any]], bool]) -> Iterator[tuple[int, Any, Any]]:
    """Yield (line, raw, record) per record; `record` is an InvalidRecord when the input cannot be read.

    `is_record` tells a single-record document from a wrapper object.
    """
    if path.suffix != ".jsonl" and not _first_line_is_object(path):
        yield from _document(path, is_record)
        return
    for lineno, raw in iter_lines(path):
        try:
            yield lineno, raw, parse_line(raw)
        except InvalidRecord as e:
            yield lineno, raw, e


def _first_line_is_object(path: Path) -> bool:
    with open(path, "rb") as f:
        first = f.readline()
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:  # also UnicodeDecodeError
        return False


class _Lines:
    """Character offset -> 1-based line number, for offsets that only grow (counts each newline once)."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def __call__(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _document(path: Path, is_record: Callable[[dict[str, Any]], bool]) -> Iterator[tuple[int, Any, Any]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        yield (
            line,
            data[max(0, e.start - 80) : e.start + 80],
            InvalidRecord(
                "bad_utf8", f"invalid byte 0x{data[e.start]:02x} at byte {e.start}; the JSON document cannot be read"
            ),
        )
        return
    lines = _Lines(text)
    pos = _skip(text, 0)
    if pos == len(text):
        return
    if text[pos] == "[":
        yield from _array(text, pos, lines)
        return
    try:
        doc, end = _decoder.raw_decode(text, pos)
        if _skip(text, end) != len(text):
            raise json.JSONDecodeError("extra data after the JSON document", text, _skip(text, end))
    except json.JSONDecodeError as e:
        yield (
            lines(e.pos),
            text[e.pos : e.pos + 200],
            InvalidRecord("bad_json", f"{e.msg} (line {lines(e.pos)}, column {e.colno})"),
        )
        return
    if not isinstance(doc, dict):
        yield lines(pos), text[pos : pos + 200], InvalidRecord("not_object", f"the document is a {type(doc).__name__}")
        return
    key = None if is_record(doc) else _records_key(doc)
    if key is None:
        yield lines(pos), text[pos:end], doc
        return
    yield from _array(text, _value_start(text, pos, key), lines)


def _records_key(doc: dict[str, Any]) -> str | None:
    """The one key of a wrapper object whose value is a non-empty list of objects, if there is exactly one."""
    keys = [k for k, v in doc.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    return keys[0] if len(keys) == 1 else None


def _value_start(text: str, pos: int, wanted: str) -> int:
    """Offset of the value of top-level key `wanted` in the (already valid) object starting at `pos`."""
    pos = _skip(text, pos + 1)
    while True:
        key, pos = _decoder.raw_decode(text, pos)
        pos = _skip(text, _skip(text, pos) + 1)  # past ':'
        if key == wanted:
            return pos
        _, pos = _decoder.raw_decode(text, pos)
        pos = _skip(text, _skip(text, pos) + 1)  # past ','


def _array(text: str, pos: int, lines: _Lines) -> Iterator[tuple[int, Any, Any]]:
    pos = _skip(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            obj, end = _decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            line = lines(pos)  # the element's first line; the detail says where the syntax breaks
            detail = f"{e.msg} at line {lines(e.pos)}, column {e.colno}; the rest of the array cannot be read"
            yield line, text[pos : pos + 200], InvalidRecord("bad_json", detail)
            return
        line = lines(pos)
        yield (
            line,
            text[pos:end],
            obj
            if isinstance(obj, dict)
            else InvalidRecord("not_object", f"array element is a {type(obj).__name__}, not an object"),
        )
        pos = _skip(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip(text, pos + 1)
        elif pos < len(text) and text[pos] == "]":
            return
        else:
            at = min(pos, len(text) - 1) if text else 0
            yield (
                lines(at),
                text[pos : pos + 200],
                InvalidRecord(
                    "bad_json",
                    f"expected ',' or ']' after the element on line {line}; the rest of the array cannot be read",
                ),
            )
            return
