"""Canonical -> OpenAI messages -> canonical is the identity (hypothesis), and `to_openai` writes arguments
as JSON strings that decode to the canonical objects."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from trajtune.data_builders.converters.openai import convert, to_openai
from trajtune.data_builders.trajectory import validate_record

NAMES = ["get_weather", "search", "math.hypot"]
TOOLS = [{"type": "function", "function": {"name": n, "description": f"tool {n}", "parameters": {"type": "object"}}}
         for n in NAMES]  # fmt: skip
text = st.text(max_size=40)
json_scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text
json_value = st.recursive(
    json_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=10
)
arguments = st.dictionaries(text, json_value, max_size=4)
loss = st.sampled_from([None, True, False])


@st.composite
def trajectories(draw):
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(text)})
    open_calls: list[dict] = []
    for step in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["user", "say", "call", "result"] if open_calls else ["user", "say", "call"]))
        if kind == "user":
            messages.append({"role": "user", "content": draw(text)})
        elif kind == "say":
            msg = {"role": "assistant", "content": draw(text)}
            if (flag := draw(loss)) is not None:
                msg["loss"] = flag
            messages.append(msg)
        elif kind == "call":
            calls = []
            for k in range(draw(st.integers(1, 3))):
                call = {
                    "type": "function",
                    "function": {"name": draw(st.sampled_from(NAMES)), "arguments": draw(arguments)},
                }
                if draw(st.booleans()):
                    call["id"] = f"id_{step}_{k}"
                calls.append(call)
            open_calls.extend(calls)
            messages.append({"role": "assistant", "content": draw(st.none() | text), "tool_calls": calls})
        else:
            call = open_calls.pop(0)
            result = {"role": "tool", "content": draw(text)}
            if "id" in call and draw(st.booleans()):
                result["tool_call_id"] = call["id"]
            messages.append(result)
    record = {"id": draw(text.filter(bool)), "source": draw(st.sampled_from(["openai", "sharegpt", "mix/a"])),
              "tools": TOOLS, "messages": messages}  # fmt: skip
    if draw(st.booleans()):
        record["meta"] = draw(st.dictionaries(text, json_value, max_size=3))
    return validate_record(record)


@settings(max_examples=150, deadline=None)
@given(trajectories())
def test_canonical_to_openai_to_canonical_is_identity(record):
    snapshot = json.dumps(record, sort_keys=True)
    openai = to_openai(record)
    for m in openai["messages"]:
        for c in m.get("tool_calls") or ():
            assert isinstance(c["function"]["arguments"], str)
    assert convert(json.loads(json.dumps(openai)), "unused:1") == record
    assert json.dumps(record, sort_keys=True) == snapshot  # to_openai did not modify its input
