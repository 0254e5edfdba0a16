"""The canonical trajectory's validation rules (issue 2, item 2): each invalid kind has its reason code and a
message that says where; valid records are normalised (string arguments, missing ids, tool names); streaming
reads skip blank lines and keep exact books."""

import io
import json

import pytest

from trajtune.data_builders.trajectory import InvalidRecord, Ledger, parse_line, read_trajectories, validate_record

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
                "where": {
                    "type": "object",
                    "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                    "required": ["lat", "lon"],
                },
            },
            "required": ["city"],
        },
    },
}


def call(args, name="get_weather", **extra):
    return {"type": "function", "function": {"name": name, "arguments": args}, **extra}


def rec(*messages, tools=(WEATHER,)):
    return {"tools": list(tools), "messages": list(messages)}


USER = {"role": "user", "content": "weather?"}


def reason_of(obj):
    with pytest.raises(InvalidRecord) as e:
        validate_record(obj)
    return e.value.reason, e.value.detail


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"\xff\xfe{}", "bad_utf8"),
        (b'{"messages": [', "bad_json"),
        (b"[1, 2]", "not_object"),
        (b'"text"', "not_object"),
    ],
)
def test_unreadable_lines_have_their_reason(raw, reason):
    with pytest.raises(InvalidRecord) as e:
        parse_line(raw)
    assert e.value.reason == reason


def test_each_invalid_record_kind_has_its_reason_and_says_where():
    assert reason_of([1])[0] == "not_object"
    assert reason_of({"id": "x"})[0] == "no_messages"
    assert reason_of({"messages": []})[0] == "no_messages"
    reason, detail = reason_of(rec(USER, {"role": "robot", "content": "beep"}))
    assert (reason, "messages[1]" in detail, "'robot'" in detail) == ("bad_role", True, True)
    reason, detail = reason_of(rec(USER, {"role": "tool", "content": "22"}))
    assert reason == "orphan_tool_result" and "messages[1]" in detail
    reason, detail = reason_of(rec(USER, {"role": "tool", "tool_call_id": "nope", "content": "22"}))
    assert reason == "orphan_tool_result" and "'nope'" in detail
    reason, detail = reason_of(rec(USER, {"role": "assistant", "content": None, "tool_calls": [call({}, "get_time")]}))
    assert reason == "undefined_tool" and "get_time" in detail and "get_weather" in detail
    assert reason_of(rec(USER, {"role": "assistant", "tool_calls": [call(["Paris"])]}))[0] == "args_not_object"
    assert reason_of(rec(USER, {"role": "assistant", "tool_calls": [call('"Paris"')]}))[0] == "args_not_object"
    assert reason_of(rec(USER, {"role": "assistant", "tool_calls": [call("{city: Paris}")]}))[0] == "args_not_object"


@pytest.mark.parametrize(
    "args, where",
    [
        ({"unit": "c"}, "(top level)"),  # required
        ({"city": 7}, "city"),  # type
        ({"city": "Paris", "unit": "kelvin"}, "unit"),  # enum
        ({"city": "Paris", "where": {"lat": "north", "lon": 2.3}}, "where/lat"),  # nested type
        ({"city": "Paris", "where": {"lat": 48.8}}, "where"),  # nested required
    ],
)
def test_arguments_failing_the_schema_name_the_failing_path(args, where):
    reason, detail = reason_of(rec(USER, {"role": "assistant", "tool_calls": [call(args)]}))
    assert reason == "args_schema"
    assert f"at {where}:" in detail and "messages[1].tool_calls[0] (get_weather)" in detail


def test_string_arguments_become_the_object_and_ids_are_assigned_in_order():
    out = validate_record(
        rec(
            USER,
            {"role": "assistant", "content": None, "tool_calls": [call('{"city": "Paris"}'), call({"city": "Rome"})]},
            {"role": "tool", "content": "20"},
            {"role": "tool", "content": "25"},
            {"role": "assistant", "content": "Paris 20, Rome 25.", "loss": True},
        )
    )
    calls = out["messages"][1]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert [c["id"] for c in calls] == ["call_0", "call_1"]
    answered = [(m["tool_call_id"], m["name"]) for m in out["messages"][2:4]]
    assert answered == [("call_0", "get_weather"), ("call_1", "get_weather")]
    assert out["messages"][4]["loss"] is True


def test_explicit_ids_are_kept_and_results_may_answer_out_of_order():
    out = validate_record(
        rec(
            USER,
            {"role": "assistant", "tool_calls": [call({"city": "A"}, id="a"), call({"city": "B"}, id="b")]},
            {"role": "tool", "tool_call_id": "b", "content": "2"},
            {"role": "tool", "content": "1"},  # no id: answers the call still open, "a"
        )
    )
    assert [m["tool_call_id"] for m in out["messages"][2:]] == ["b", "a"]


def test_validation_does_not_touch_its_input():
    original = rec(USER, {"role": "assistant", "tool_calls": [call('{"city": "Paris"}')]})
    snapshot = json.dumps(original, sort_keys=True)
    validate_record(original)
    assert json.dumps(original, sort_keys=True) == snapshot


def test_read_trajectories_skips_blank_lines_and_keeps_exact_books(tmp_path):
    path = tmp_path / "t.jsonl"
    good = json.dumps(rec(USER))
    path.write_bytes(b"\n".join([good.encode(), b"", b"   ", b"not json", good.encode(), b"\xff"]) + b"\n")
    sink = io.StringIO()
    ledger = Ledger(quarantine=sink)
    kept = list(read_trajectories(path, ledger))
    assert len(kept) == 2
    assert ledger.summary() == {"read": 4, "kept": 2, "quarantined": 2, "by_reason": {"bad_json": 1, "bad_utf8": 1}}
    rows = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [(r["line"], r["reason"]) for r in rows] == [(4, "bad_json"), (6, "bad_utf8")]


def test_a_utf8_byte_order_mark_on_line_one_is_not_a_bad_record(tmp_path):
    from trajtune.data_builders.trajectory import Ledger, read_trajectories

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"messages": [{"role": "user", "content": "hi"}]}\n')
    ledger = Ledger()
    assert [r["messages"][0]["content"] for r in read_trajectories(path, ledger)] == ["hi"]
    assert ledger.summary() == {"read": 1, "kept": 1, "quarantined": 0, "by_reason": {}}


def test_line_chunks_and_split_lines_give_the_lines_iter_lines_gives_at_any_chunk_size(tmp_path):
    import random

    from trajtune.data_builders.trajectory import iter_lines, line_chunks, split_lines

    rng = random.Random(0)
    for trial in range(150):
        parts = []
        for _ in range(rng.randint(0, 20)):
            kind = rng.random()
            if kind < 0.2:
                parts.append(b"")  # blank
            elif kind < 0.35:
                parts.append(rng.choice([b" ", b"\t", b"\r", b"  \x0c", b"\x0b"]))  # whitespace only: blank too
            else:
                parts.append(bytes(rng.choice(b'ab {}"\r\t\xef\xbb\xbf') for _ in range(rng.randint(1, 40))))
        data = b"\n".join(parts) + rng.choice([b"", b"\n", b"\r\n", b"\n\n"])
        path = tmp_path / f"t{trial}.jsonl"
        path.write_bytes(data)
        want = list(iter_lines(path))
        for target in (1, 3, 16, 1 << 22):  # lines longer than a chunk make longer chunks
            chunks = list(line_chunks(path, target))
            assert [c[0] for c in chunks[1:]] == [c[1] for c in chunks[:-1]] and (chunks[-1][1] if chunks else 0) == len(data)
            got = []
            for start, end, first in chunks:
                assert start == 0 or data[start - 1:start] == b"\n"  # no line is split
                buf = data[start:end]
                got += [(int(n), buf[s:e].rstrip(b"\r\n")) for n, s, e in zip(*split_lines(buf, first))]
            assert got == want, (trial, target)


def test_reasoning_content_is_a_string_on_assistant_messages():
    ok = validate_record({"messages": [{"role": "user", "content": "q"},
                                       {"role": "assistant", "content": "a", "reasoning_content": "think"}]})
    assert ok["messages"][1]["reasoning_content"] == "think"
    for bad in ({"role": "assistant", "content": "a", "reasoning_content": ["think"]},
                {"role": "user", "content": "q", "reasoning_content": "think"}):
        with pytest.raises(InvalidRecord, match="reasoning_content must be a string on an assistant message") as e:
            validate_record({"messages": [{"role": "user", "content": "q"}, bad]})
        assert e.value.reason == "bad_message"
