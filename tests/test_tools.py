"""Tools from Python: configs/tools.json is exactly the schema of the demo backends, the registry validates and
executes calls (errors come back as JSON, never as exceptions), the demo backends are deterministic, and tools
files with problems give clear errors."""

import json
from pathlib import Path

import pytest

from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.tool_calls import format_tool_calls, parse_tool_calls
from trajtune.data_builders.tools import (
    ToolRegistry,
    function_to_tool,
    get_time,
    get_weather,
    load_tools_file,
)

TOOLS_JSON = Path(__file__).resolve().parents[1] / "configs" / "tools.json"


def call(name, args):
    return {"id": "call_0", "type": "function", "function": {"name": name, "arguments": args}}


def test_configs_tools_json_is_the_schema_of_the_demo_backends():
    assert load_tools_file(TOOLS_JSON) == [function_to_tool(get_weather), function_to_tool(get_time)]
    assert json.loads(TOOLS_JSON.read_text()) == ToolRegistry.demo().tools


def test_function_to_tool_reads_hints_docstring_and_defaults():
    def search_flights(origin: str, destination: str, max_stops: int = 1, cabin: str = "economy",
                       dates: list[str] | None = None) -> list:
        """
        Search flights between two airports.

        Args:
            origin: IATA code of the departure airport.
            destination: IATA code of the arrival airport.
            max_stops: Most stops allowed.
            cabin: Cabin class. (choices: ["economy", "business"])
            dates: Travel dates, ISO format.

        Returns:
            The matching flights.
        """
        return []

    fn = function_to_tool(search_flights)["function"]
    assert fn["name"] == "search_flights" and fn["description"] == "Search flights between two airports."
    params = fn["parameters"]
    assert params["required"] == ["origin", "destination"]
    assert params["properties"]["max_stops"]["type"] == "integer"
    assert params["properties"]["cabin"]["enum"] == ["economy", "business"]
    assert params["properties"]["dates"]["items"] == {"type": "string"}
    assert "return" not in fn  # OpenAI tools have no return schema


def test_function_without_docstring_is_a_clear_error():
    def no_doc(x: int) -> int:
        return x

    with pytest.raises(TrajtuneError, match="no_doc.*docstring"):
        function_to_tool(no_doc)


def test_execute_runs_valid_calls_and_returns_json():
    registry = ToolRegistry.demo()
    out = json.loads(registry.execute(call("get_time", {"location": "new  York"})))
    assert out == {"location": "new  York", "timezone": "America/New_York", "utc_offset": "-04:00",
                   "local_time": "2024-06-01T08:00:00-04:00"}
    # a JSON-string arguments field and a bare {"name", "arguments"} call work too
    bare = registry.execute({"name": "get_weather", "arguments": '{"city": "Beijing"}'})
    assert json.loads(bare) == get_weather("Beijing")


@pytest.mark.parametrize("bad_call,kind,needle", [
    (call("get_stock", {"symbol": "AAPL"}), "unknown_tool", "get_weather"),
    (call("get_weather", {}), "bad_arguments", "'city' is a required property"),
    (call("get_weather", {"city": 42}), "bad_arguments", "42 is not of type 'string'"),
    (call("get_weather", {"city": "Paris", "days": 3}), "bad_arguments", "unexpected 'days'"),
    (call("get_weather", "{not json"), "bad_arguments", "not JSON"),
    (call("get_weather", ["Paris"]), "bad_arguments", "must be an object"),
    (call("get_time", {"location": "Atlantis"}), "tool_error", "unknown location 'Atlantis'"),
    (call("get_weather", {"city": "  "}), "tool_error", "must not be empty"),
    ({"id": "call_0"}, "bad_call", "function name"),
])
def test_bad_calls_give_structured_error_results(bad_call, kind, needle):
    error = json.loads(ToolRegistry.demo().execute(bad_call))["error"]
    assert error["type"] == kind and needle in error["message"], error


def test_unserialisable_result_is_an_error_result():
    registry = ToolRegistry()

    @registry.register
    def make_set(n: int) -> set:
        """
        A set of the first n numbers.

        Args:
            n: How many.
        """
        return set(range(n))

    assert json.loads(registry.execute(call("make_set", {"n": 2})))["error"]["type"] == "tool_error"


def test_registering_the_same_name_swaps_the_backend():
    registry = ToolRegistry.demo()

    def get_weather(city: str) -> dict:  # noqa: F811 - a "real API" replacing the demo backend
        """
        Get the current weather in a city.

        Args:
            city: The city name.
        """
        return {"city": city, "temperature_c": 21}

    registry.register(get_weather)
    assert [t["function"]["name"] for t in registry.tools] == ["get_weather", "get_time"]
    assert json.loads(registry.execute(call("get_weather", {"city": "Oslo"}))) == {"city": "Oslo", "temperature_c": 21}


def test_register_with_an_explicit_schema_from_a_tools_file():
    registry = ToolRegistry()
    schema = load_tools_file(TOOLS_JSON)[1]
    registry.register(lambda location: {"at": location}, tool=schema)
    assert registry.tools == [schema]
    assert json.loads(registry.execute(call("get_time", {"location": "Mars"}))) == {"at": "Mars"}


def test_demo_backends_are_deterministic_and_plausible():
    a, b = get_weather("Beijing"), get_weather("  beijing ")
    assert {k: v for k, v in a.items() if k != "city"} == {k: v for k, v in b.items() if k != "city"}
    temps = {get_weather(c)["temperature_c"] for c in ["Paris", "Oslo", "Lima", "Cairo", "Tokyo", "Quito"]}
    assert all(-5 <= t <= 35 for t in temps) and len(temps) > 1
    assert get_time("Kathmandu")["local_time"] == "2024-06-01T17:45:00+05:45"
    assert get_time("Honolulu")["utc_offset"] == "-10:00"


def test_parsed_model_output_executes_end_to_end():
    # what a rollout does: model text -> parse against the tools -> execute -> tool message content
    registry = ToolRegistry.demo()
    text = "Let me check.\n" + format_tool_calls([call("get_weather", {"city": "Paris"})], "hermes")
    parsed = parse_tool_calls(text, "hermes", tools=registry.tools)
    assert parsed.error is None
    assert json.loads(registry.execute(parsed.calls[0]))["city"] == "Paris"


@pytest.mark.parametrize("content,needle", [
    (None, "tools file not found"),
    ('[{"type": "function", "function": {"name": "f",}}]', "line 1, column"),
    ('{"name": "f"}', "expected a JSON list of tools"),
    ('[{"type": "function", "function": {"description": "no name"}}]', "tools[0] has no function name"),
    ('[{"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "strin"}}}}]',
     "not a valid JSON Schema"),
    ('[{"name": "f"}, {"name": "f"}]', "duplicate tool name 'f'"),
])
def test_bad_tools_files_are_clear_errors(tmp_path, content, needle):
    path = tmp_path / "tools.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TrajtuneError) as info:
        load_tools_file(path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_tools_file_accepts_bare_specs_and_a_tools_key(tmp_path):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"tools": [{"name": "f", "description": "d"}]}))
    assert load_tools_file(path) == [{"type": "function", "function": {
        "name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}}]
