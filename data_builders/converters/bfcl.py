"""BFCL (Berkeley Function-Calling Leaderboard) question files -> canonical.

A record is `{id, question: [[messages of turn 1], [turn 2], ...], function: [specs]}` (multi-turn records name
`involved_classes` instead, whose specs live in `multi_turn_func_doc/<class file>.json` next to the input).
Types are BFCL's (`dict`, `float`, `tuple`, `any`) and become JSON Schema. When `possible_answer/<same file name>`
exists, its ground truth becomes the assistant's calls: single-turn entries map each argument to a list of
accepted values (see `pick`: `""` among them means "may be omitted", as in BFCL's checker, and an omissible
argument is left out rather than written as `null`), multi-turn entries are Python call strings per turn
(`cd(folder='document')`, positional arguments mapped in parameter order). BFCL has no tool results, so the
calls stay unanswered. Irrelevance records have no answer: the user turn alone.
"""

from __future__ import annotations

import ast
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..trajectory import InvalidRecord, Tool, Trajectory
from .common import FileContext, finish, meta_with_extras, need, tools_from_specs

NAME = "bfcl"
CLASS_FILES = {
    "GorillaFileSystem": "gorilla_file_system.json", "MathAPI": "math_api.json", "MessageAPI": "message_api.json",
    "TwitterAPI": "posting_api.json", "TicketAPI": "ticket_api.json", "TradingBot": "trading_bot.json",
    "TravelAPI": "travel_booking.json", "VehicleControlAPI": "vehicle_control.json",
}  # fmt: skip
_USED = frozenset({"id", "question", "function"})


def looks_like(record: dict[str, Any]) -> bool:
    return (
        "question" in record and ("function" in record or "involved_classes" in record)
    ) or "question_entry" in record


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def prepare(ctx: FileContext) -> None:
    """Load the file's possible answers (by id) if BFCL's `possible_answer/` folder has them."""
    answers = ctx.path.parent / "possible_answer" / ctx.path.name
    ctx.data["answers"] = {a["id"]: a["ground_truth"] for a in _read_jsonl(answers)} if answers.is_file() else {}
    ctx.data["class_tools"] = {}


def _class_tools(ctx: FileContext, cls: str) -> list[Tool]:
    cache = ctx.data.setdefault("class_tools", {})
    if cls not in cache:
        path = ctx.path.parent / "multi_turn_func_doc" / CLASS_FILES.get(cls, f"{cls}.json")
        if not path.is_file():
            raise InvalidRecord("bad_tools", f"involved class {cls!r}: no function docs at {path}")
        cache[cls] = tools_from_specs(_read_jsonl(path), str(path))
    return cache[cls]


def pick(accepted: Any, schema: dict[str, Any] | None = None, required: bool = False) -> Any:
    """One value from BFCL's list of accepted values for a parameter, or _OMIT to leave the parameter out.

    BFCL's checker accepts a missing parameter when `""` is among its values and the function does not require
    it; `null` there is the parameter's null default, which a call expresses by leaving the parameter out. So:
    the first value other than `""`/`null` that fits the parameter's JSON `schema` is used (nested dicts are
    picked key by key); if none fits and the parameter is not `required`, _OMIT; else the first such value, or
    `null` when that is all there is (validation then says what is wrong).
    >>> pick(["", None]), pick(["", "units"]), pick(["", "dontcare"], {"type": "integer"})
    (_OMIT, 'units', _OMIT)
    """
    if not isinstance(accepted, list):
        return accepted
    schema = schema or {}
    values = [_pick_dict(v, schema) if isinstance(v, dict) else v for v in accepted if v != "" and v is not None]
    for value in values:
        if _fits(value, schema):
            return value
    if (not required and ("" in accepted or None in accepted)) or not (values or None in accepted):
        return _OMIT
    return values[0] if values else None


def _pick_dict(accepted: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A dict value whose keys each hold a list of accepted values, picked key by key against its object schema."""
    props, required = schema.get("properties") or {}, set(schema.get("required") or ())
    picked = ((k, pick(v, props.get(k), k in required)) for k, v in accepted.items())
    return {k: v for k, v in picked if v is not _OMIT}


class _Omit:
    def __repr__(self) -> str:
        return "_OMIT"


_OMIT = _Omit()


@lru_cache(maxsize=1024)
def _validator(schema_json: str) -> Any:
    import jsonschema

    schema = json.loads(schema_json)
    return jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(schema)


def _fits(value: Any, schema: dict[str, Any]) -> bool:
    if not schema:
        return True
    try:
        return _validator(json.dumps(schema, sort_keys=True)).is_valid(value)
    except Exception:  # a broken schema: validating the record reports it as bad_tools
        return True


def call_from_string(text: str, tools: dict[str, Tool], where: str) -> dict[str, Any]:
    """`name(a, k=v)` as a call; positional arguments take the tool's parameter names in order."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
        if not isinstance(node, ast.Call):
            raise ValueError("not a call")
        name = ast.unparse(node.func)
        args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
        if node.args:
            order = list(tools[name]["function"]["parameters"].get("properties", {})) if name in tools else []
            if len(order) < len(node.args):
                raise ValueError(f"{len(node.args)} positional arguments, but {name!r} has no such parameters")
            args.update({order[i]: ast.literal_eval(a) for i, a in enumerate(node.args)})
    except (SyntaxError, ValueError, TypeError) as e:
        raise InvalidRecord("unsupported", f"{where}: cannot read call {text!r} ({e})") from None
    return {"type": "function", "function": {"name": name, "arguments": args}}


def convert(record: Any, rid: str, ctx: FileContext) -> Trajectory:
    """One BFCL question record (with its possible answer when the file has one)."""
    truth = None
    if "question_entry" in record:  # BFCL v4 sample rows: {category, question_entry, possible_answer}
        truth = (record.get("possible_answer") or {}).get("ground_truth")
        record = need(record, "question_entry", dict)
    turns = need(record, "question", list)
    if "function" in record:
        tools = tools_from_specs(record["function"], "`function`")
    else:
        tools = [t for cls in need(record, "involved_classes", list) for t in _class_tools(ctx, cls)]
    if truth is None:
        truth = ctx.data.get("answers", {}).get(record.get("id"))
    by_name = {t["function"]["name"]: t for t in tools}
    multi_turn = isinstance(truth, list) and truth and all(isinstance(t, list) for t in truth)
    messages: list[dict[str, Any]] = []
    for t, turn in enumerate(turns):
        if not isinstance(turn, list):
            raise InvalidRecord("bad_message", f"question[{t}] must be a list of messages")
        messages.extend(turn)
        calls: list[dict[str, Any]] = []
        if multi_turn and t < len(truth):
            calls = [call_from_string(s, by_name, f"ground_truth[{t}][{j}]") for j, s in enumerate(truth[t])]
        elif truth and not multi_turn and t == len(turns) - 1:
            for j, entry in enumerate(truth):
                if not isinstance(entry, dict) or len(entry) != 1:
                    raise InvalidRecord("unsupported", f"ground_truth[{j}] must be one {{function: {{arg: [values]}}}}")
                ((name, accepted),) = entry.items()
                params = (by_name[name]["function"].get("parameters") or {}) if name in by_name else {}
                args = _pick_dict(accepted or {}, params)
                calls.append({"type": "function", "function": {"name": name, "arguments": args}})
        if calls:
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
    meta = meta_with_extras(record, _USED)
    meta["has_answer"] = truth is not None
    out = {"id": record.get("id", rid), "tools": tools, "messages": messages, "meta": meta}
    return finish(out, NAME, rid)
