"""Tool-call formats both ways: the text each syntax renders matches the real chat templates, parse(format(calls))
is the identity for every syntax (hypothesis), real-looking model outputs parse to the right calls and content,
and malformed outputs give the right structured error instead of an exception."""

import keyword

import pytest
from conftest import TEMPLATES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trajtune.data_builders.tool_calls import (
    ERROR_KINDS,
    ONE_CALL_PER_TURN,
    SYNTAXES,
    format_tool_calls,
    mistral_call_id,
    parse_tool_calls,
)

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"]}}}]


def call(name, args, i=0):
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}


def calls_of(out):
    return [(c["function"]["name"], c["function"]["arguments"]) for c in out.calls]


# ---------------------------------------------------------------------------------------------------------
# Formatting agrees with the real templates


def _render(template_file, messages, tools=None):
    from trajtune.data_builders.tokenizer import byte_level_tokenizer

    tok = byte_level_tokenizer((TEMPLATES / template_file).read_text())
    return tok.apply_chat_template(messages, tools=tools, tokenize=False)


@pytest.mark.parametrize("template_file,syntax,call_id", [
    ("qwen2.5-instruct.jinja", "hermes", "call_0"),
    ("qwen3.jinja", "hermes", "call_0"),
    ("hermes-2-pro-tool_use.jinja", "hermes", "call_0"),
    ("llama-3.1-instruct.jinja", "llama3", "call_0"),
    ("mistral-7b-instruct-v0.3.jinja", "mistral", "abcDEF123"),
])
def test_format_is_what_the_template_renders(template_file, syntax, call_id):
    c = call("get_weather", {"city": "São Paulo \"SP\"", "unit": "c"})
    c["id"] = call_id
    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": [c]},
                {"role": "tool", "tool_call_id": call_id, "name": "get_weather", "content": "{\"t\": 1}"}]
    text = _render(template_file, messages, WEATHER)
    assert format_tool_calls([c], syntax) in text


def test_hermes_parallel_calls_match_qwen_template():
    cs = [call("get_weather", {"city": "Paris"}, 0), call("get_weather", {"city": "東京"}, 1)]
    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": cs}]
    assert format_tool_calls(cs, "hermes") in _render("qwen2.5-instruct.jinja", messages, WEATHER)


def test_format_uses_tojson_spacing_and_keeps_unicode():
    text = format_tool_calls([call("f", {"a": [1, 2], "b": "é"})], "hermes")
    assert text == '<tool_call>\n{"name": "f", "arguments": {"a": [1, 2], "b": "é"}}\n</tool_call>'


def test_mistral_ids_are_nine_alphanumerics_and_deterministic():
    assert mistral_call_id("abcDEF123") == "abcDEF123"
    derived = mistral_call_id("call_0")
    assert len(derived) == 9 and derived.isalnum() and derived == mistral_call_id("call_0")
    assert derived != mistral_call_id("call_1")


def test_chatglm3_format_follows_its_prompt_docs():
    text = format_tool_calls([call("get_current_weather", {"location": "beijing", "unit": "celsius"})], "chatglm3")
    assert text == 'get_current_weather\n```python\ntool_call(location="beijing", unit="celsius")\n```'


def test_one_call_per_turn_syntaxes_refuse_parallel_calls():
    two = [call("f", {}, 0), call("g", {}, 1)]
    for syntax in ONE_CALL_PER_TURN:
        with pytest.raises(ValueError, match="one call per assistant turn"):
            format_tool_calls(two, syntax)


def test_pythonic_refuses_names_python_cannot_write():
    with pytest.raises(ValueError, match="Python identifier"):
        format_tool_calls([call("get-weather", {})], "pythonic")
    with pytest.raises(ValueError, match="unknown tool-call syntax"):
        format_tool_calls([call("f", {})], "xml")


# ---------------------------------------------------------------------------------------------------------
# Round trip: parse(format(calls)) == calls, for every syntax

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | \
    st.floats(allow_nan=False, allow_infinity=False) | _text
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
                     max_leaves=8)
_args = st.dictionaries(_text, _json, max_size=4)
_py_ident = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,11}", fullmatch=True).filter(lambda s: not keyword.iskeyword(s))
_py_name = st.lists(_py_ident, min_size=1, max_size=2).map(".".join)
_json_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,15}", fullmatch=True)


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_parse_inverts_format(syntax, data):
    name = _py_name if syntax == "pythonic" else _json_name
    n = 1 if syntax in ONE_CALL_PER_TURN else data.draw(st.integers(1, 3))
    cs = [call(data.draw(name), data.draw(_args), i) for i in range(n)]
    out = parse_tool_calls(format_tool_calls(cs, syntax), syntax)
    assert out.error is None, out.error
    assert out.calls == cs
    assert out.content == ""


@pytest.mark.parametrize("syntax", sorted(set(SYNTAXES) - {"glm4", "chatglm3", "pythonic", "llama3"}))
def test_content_before_calls_is_kept(syntax):
    cs = [call("get_weather", {"city": "Paris"})]
    out = parse_tool_calls("Let me check.\n" + format_tool_calls(cs, syntax), syntax)
    assert (out.content, out.calls, out.error) == ("Let me check.", cs, None)


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_plain_answer_is_content_without_calls(syntax):
    text = "\nIt is 26 °C in Beijing (sunny); see {the forecast} for more."
    out = parse_tool_calls(text, syntax)
    assert (out.calls, out.error, out.content) == ([], None, text.strip())


# ---------------------------------------------------------------------------------------------------------
# Real-looking model outputs

REAL_OUTPUTS = [
    # Qwen2.5 with a Python-repr dict (seen from small models) and parallel calls.
    ("hermes", "<tool_call>\n{'name': 'get_weather', 'arguments': {'city': 'Paris', 'unit': 'c'}}\n</tool_call>",
     "", [("get_weather", {"city": "Paris", "unit": "c"})]),
    ("hermes", '<think>\nNeed both.\n</think>\n\n<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n'
     '<tool_call>\n{"name": "b", "arguments": "{\\"x\\": 1}"}\n</tool_call>',
     "<think>\nNeed both.\n</think>", [("a", {}), ("b", {"x": 1})]),
    ("llama3", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
     "", [("get_weather", {"city": "Paris"})]),
    ("llama3", '{"name": "a", "parameters": {"q": "x;y"}}; {"name": "b", "arguments": {}}', "",
     [("a", {"q": "x;y"}), ("b", {})]),
    ("llama3", '<|python_tag|>brave_search.call(query="weather in Paris")', "",
     [("brave_search", {"query": "weather in Paris"})]),
    ("mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "Xy7pQ2mN1"}]', "",
     [("get_weather", {"city": "Paris"})]),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"location": "UTC"}', "",
     [("get_weather", {"city": "Paris"}), ("get_time", {"location": "UTC"})]),
    ("mistral", '[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris"}', "",
     [("get_weather", {"city": "Paris"})]),
    ("glm4", 'get_weather\n{"city": "北京"}', "", [("get_weather", {"city": "北京"})]),
    ("chatglm3", 'get_current_weather\n```python\ntool_call(location="beijing", unit="celsius")\n```', "",
     [("get_current_weather", {"location": "beijing", "unit": "celsius"})]),
    ("pythonic", "[get_weather(city='Paris', days=3), math.hypot(x=3, y=-4.5, opts={'a': [1, 2], 'b': None})]",
     "", [("get_weather", {"city": "Paris", "days": 3}),
          ("math.hypot", {"x": 3, "y": -4.5, "opts": {"a": [1, 2], "b": None}})]),
    ("pythonic", "```python\n[f(a=(1, 2))]\n```", "", [("f", {"a": [1, 2]})]),
    ("json_block", 'I will look it up.\n```json\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n```',
     "I will look it up.", [("get_weather", {"city": "Paris"})]),
    ("react", 'Thought: I need the weather.\nAction: get_weather\nAction Input: {"city": "Paris"}',
     "Thought: I need the weather.", [("get_weather", {"city": "Paris"})]),
    ("granite", '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]', "",
     [("get_weather", {"city": "Paris"})]),
    ("granite", 'Checking.<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]', "Checking.",
     [("get_weather", {"city": "Paris"})]),
    ("llama3", 'Looking it up. <|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
     "Looking it up.", [("get_weather", {"city": "Paris"})]),
    ("phi4", '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>', "",
     [("get_weather", {"city": "Paris"})]),
    ("phi4", 'functools[{"name": "get_weather", "arguments": {"city": "Paris"}}]', "",
     [("get_weather", {"city": "Paris"})]),
]


@pytest.mark.parametrize("syntax,text,content,expected", REAL_OUTPUTS)
def test_real_model_outputs_parse(syntax, text, content, expected):
    out = parse_tool_calls(text, syntax)
    assert out.error is None, out.error
    assert (out.content, calls_of(out)) == (content, expected)
    assert [c["id"] for c in out.calls] == [f"call_{i}" for i in range(len(expected))]


# ---------------------------------------------------------------------------------------------------------
# Malformed outputs -> structured errors

MALFORMED = [
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par', "truncated_json", 0),
    ("hermes", 'Ok <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}', "unterminated_block", 3),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "say "hi""}}\n</tool_call>',
     "bad_json", 0),
    ("hermes", '<tool_call>\n{"function": "get_weather"}\n</tool_call>', "not_a_call", 0),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": ["Paris"]}\n</tool_call>', "bad_arguments", 0),
    ("llama3", '{"name": "get_weather", "parameters": {"city": "Paris"', "truncated_json", 0),
    ("llama3", '{"city": "Paris"}', "not_a_call", 0),
    ("mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Pa', "truncated_json", 13),
    ("mistral", "[TOOL_CALLS] get the weather", "not_a_call", 0),
    ("glm4", 'get_weather\n{"city": "Paris"} and more', "bad_json", 29),
    ("glm4", 'get_weather\n{"city": ', "truncated_json", 12),
    ("chatglm3", 'get_weather\n```python\ntool_call(city="Paris"', "truncated_python", 12),
    ("chatglm3", 'get_weather\n```python\ntool_call(city=open("/etc/passwd").read())\n```', "bad_python", 12),
    ("chatglm3", 'get_weather\n```python\nprint(city="Paris")\n```', "not_a_call", 12),
    ("pythonic", "[get_weather(city='Paris'), get_time(location=", "truncated_python", 0),
    ("pythonic", "[__import__('os').system('echo pwned')]", "not_a_call", 0),
    ("pythonic", "[f(x=__import__('os').getcwd())]", "bad_python", 0),
    ("pythonic", "[get_weather('Paris')]", "bad_python", 0),
    ("pythonic", "[1, 2]", "not_a_call", 0),
    ("json_block", '```json\n{"name": "get_weather", "parameters": {"city": "Paris"}', "truncated_json", 0),
    ("json_block", '```json\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n', "unterminated_block", 0),
    ("react", "Thought: hmm\nAction: get_weather\n", "not_a_call", 13),
    ("react", "Action: get_weather\nAction Input: Paris", "bad_arguments", 34),
    ("granite", '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}', "truncated_json", 13),
    ("phi4", '<|tool_call|>[{"name": "get_weather", "arguments": {}}]', "unterminated_block", 0),
]


@pytest.mark.parametrize("syntax,text,kind,offset", MALFORMED)
def test_malformed_outputs_give_structured_errors(syntax, text, kind, offset):
    out = parse_tool_calls(text, syntax)
    assert out.error is not None and (out.error.kind, out.error.offset) == (kind, offset), out.error
    assert out.error.kind in ERROR_KINDS and out.error.message
    assert out.calls == [] and out.content == text  # a half-parsed output is never passed on


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_unknown_tool_and_schema_failures_need_tools(syntax):
    unknown = format_tool_calls([call("get_stock", {"symbol": "AAPL"})], syntax)
    assert parse_tool_calls(unknown, syntax).error is None  # without tools, any name goes
    err = parse_tool_calls(unknown, syntax, tools=WEATHER).error
    assert err.kind == "unknown_tool" and "get_weather" in err.message

    bad = format_tool_calls([call("get_weather", {"city": "Paris", "unit": "kelvin"})], syntax)
    err = parse_tool_calls(bad, syntax, tools=WEATHER).error
    assert err.kind == "bad_arguments" and "kelvin" in err.message

    good = format_tool_calls([call("get_weather", {"city": "Paris"})], syntax)
    assert calls_of(parse_tool_calls(good, syntax, tools=WEATHER)) == [("get_weather", {"city": "Paris"})]


def test_every_error_offset_points_into_the_text():
    for syntax, text, _, _ in MALFORMED:
        assert 0 <= parse_tool_calls(text, syntax).error.offset <= len(text)


_FRAGMENTS = st.sampled_from(["<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "[ARGS]", "```json",
                              "```python\n", "```", "tool_call(", "Action: f\n", "Action Input: ", "<|tool_call|>",
                              "<|/tool_call|>", "functools[", "{", "}", "[", "]", "(", ")", '"', "'", "\\", ";", ",",
                              ":", "=", "\n", " ", "name", '"name": "f"', '"arguments": ', "f(a=1)", "1", "null"])


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(_FRAGMENTS | _text, max_size=12))
def test_parse_never_raises_on_arbitrary_text(syntax, pieces):
    out = parse_tool_calls("".join(pieces), syntax)
    assert out.error is None or (out.error.kind in ERROR_KINDS and out.calls == [])


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_generation_cut_off_inside_the_arguments_is_truncated(syntax):
    text = format_tool_calls([call("get_weather", {"city": "Paris", "days": [1, 2]})], syntax)
    cut = text[:text.index("Par") + 3]
    out = parse_tool_calls(cut, syntax)
    assert out.error is not None and out.error.kind in ("truncated_json", "truncated_python"), out.error
