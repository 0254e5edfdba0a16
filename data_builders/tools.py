"""Tools from Python: typed, documented functions become OpenAI tool schemas, and parsed calls run against them.

`function_to_tool(fn)` reads a function's type hints and Google-style docstring (through
`transformers.utils.get_json_schema`) into `{"type": "function", "function": {name, description, parameters}}`.
`ToolRegistry` holds functions by name; `execute(call)` validates the call's arguments against the tool's JSON
Schema and runs the function, always returning a JSON string: the result, or `{"error": {"type", "message"}}`
for an unknown tool, bad arguments or a failing function (nothing escapes as an exception, so a rollout can hand
the error to the model as the tool's answer). `load_tools_file` reads a tools JSON file such as
`configs/tools.json` with clear errors.

The two demo tools, `get_weather(city)` and `get_time(location)`, have deterministic offline backends here:
the same question always gets the same answer, so data and tests are reproducible without the internet. To use
a real API instead, register your own function under the same name; it replaces the demo one:

    registry = ToolRegistry.demo()
    registry.register(my_real_get_weather)  # def get_weather(city: str) -> dict, with a docstring
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .errors import TrajtuneError
from .trajectory import InvalidRecord, Tool, check_arguments, normalise_tools


def function_to_tool(fn: Callable[..., Any]) -> Tool:
    """The OpenAI tool schema of a typed function with a Google-style docstring (`Args:` names every parameter).

    Raises TrajtuneError naming the function when it has no docstring, an undocumented parameter or a missing
    type hint. The `return` entry `get_json_schema` adds is dropped: OpenAI tools have no such field. Example:
    >>> function_to_tool(get_weather)["function"]["parameters"]["required"]
    ['city']
    """
    from transformers.utils import get_json_schema  # heavy import, only when a tool is built

    try:
        schema = get_json_schema(fn)
    except Exception as e:  # DocstringParsingException, TypeHintParsingException
        name = getattr(fn, "__name__", repr(fn))
        raise TrajtuneError(f"cannot build a tool schema from {name}: {e} (give it type hints and a docstring with "
                            f"an Args: section naming every parameter)") from None
    function = {k: v for k, v in schema["function"].items() if k != "return"}
    return {"type": "function", "function": function}


def _error(kind: str, message: str) -> str:
    return json.dumps({"error": {"type": kind, "message": message}}, ensure_ascii=False)


class ToolRegistry:
    """Functions by tool name, with their schemas; executes canonical tool calls safely.

    >>> registry = ToolRegistry.demo()
    >>> registry.execute({"id": "call_0", "type": "function",
    ...                   "function": {"name": "get_time", "arguments": {"location": "Tokyo"}}})
    '{"location": "Tokyo", "timezone": "Asia/Tokyo", "utc_offset": "+09:00", "local_time": "2024-06-01T21:00:00+09:00"}'
    """

    def __init__(self) -> None:
        self._functions: dict[str, Callable[..., Any]] = {}
        self._tools: dict[str, Tool] = {}

    def register(self, fn: Callable[..., Any], tool: Tool | None = None) -> Callable[..., Any]:
        """Add `fn` under its tool name (replacing any tool of that name) and return it, so this also works as
        a decorator. `tool` gives the schema explicitly (e.g. from a tools file); otherwise it is built from
        the function's hints and docstring."""
        try:
            (tool,) = normalise_tools([tool if tool is not None else function_to_tool(fn)])
        except InvalidRecord as e:
            raise TrajtuneError(f"cannot register {getattr(fn, '__name__', fn)!r}: {e.detail}") from None
        name = tool["function"]["name"]
        self._functions[name] = fn
        self._tools[name] = tool
        return fn

    @property
    def tools(self) -> list[Tool]:
        """The registered tools in OpenAI format, in registration order (what a record's `tools` holds)."""
        return list(self._tools.values())

    def execute(self, call: dict[str, Any]) -> str:
        """Run one tool call (canonical `{"function": {"name", "arguments"}}` or a bare `{"name", "arguments"}`)
        and return its result as a JSON string. Never raises: an unknown tool, arguments that are not an object
        or fail the schema (or name parameters the tool does not have), or an exception in the function give
        `{"error": {"type": bad_call | unknown_tool | bad_arguments | tool_error, "message": ...}}`."""
        fn_part = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn_part, dict) or not isinstance(fn_part.get("name"), str):
            return _error("bad_call", f"a tool call needs a function name, got {str(call)[:200]}")
        name, args = fn_part["name"], fn_part.get("arguments", {})
        if name not in self._functions:
            known = ", ".join(self._tools) or "none"
            return _error("unknown_tool", f"no tool named {name!r} (available: {known})")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                return _error("bad_arguments", f"arguments of {name} are not JSON: {e.msg} at char {e.pos}")
        if not isinstance(args, dict):
            return _error("bad_arguments", f"arguments of {name} must be an object, got {type(args).__name__}")
        params = self._tools[name]["function"]["parameters"]
        try:
            check_arguments(args, params, f"arguments of {name}")
        except InvalidRecord as e:
            return _error("bad_arguments", e.detail)
        # JSON Schema allows extra keys unless told otherwise, but a Python function would fail on them.
        unexpected = sorted(set(args) - set(params.get("properties", args)))
        if unexpected:
            return _error("bad_arguments", f"arguments of {name}: unexpected {', '.join(map(repr, unexpected))} "
                          f"(parameters: {', '.join(params.get('properties', {})) or 'none'})")
        try:
            result = self._functions[name](**args)
        except Exception as e:  # the tool's own failure is an answer for the model, not a crash of the run
            return _error("tool_error", f"{name} failed: {type(e).__name__}: {e}")
        try:
            return json.dumps(result, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            return _error("tool_error", f"{name} returned a value that is not JSON-serialisable: {e}")

    @classmethod
    def demo(cls) -> ToolRegistry:
        """A registry with the offline demo backends of configs/tools.json: get_weather and get_time."""
        registry = cls()
        registry.register(get_weather)
        registry.register(get_time)
        return registry


def load_tools_file(path: str | Path) -> list[Tool]:
    """Tools from a JSON file: a list of OpenAI tools (or bare `{"name", "parameters"}` specs), or an object
    with a `tools` list. Raises TrajtuneError naming the file and what is wrong (missing, not JSON with line
    and column, wrong shape, invalid schema, duplicate name)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrajtuneError(f"{path}: tools file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TrajtuneError(f"{path}: cannot read tools file: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TrajtuneError(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})") from None
    if isinstance(data, dict) and "tools" in data:
        data = data["tools"]
    if not isinstance(data, list):
        raise TrajtuneError(f"{path}: expected a JSON list of tools (or an object with a \"tools\" list), "
                            f"got {type(data).__name__}")
    try:
        tools = normalise_tools(data)
    except InvalidRecord as e:
        raise TrajtuneError(f"{path}: {e.detail}") from None
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        name = tool["function"]["name"]
        if name in seen:
            raise TrajtuneError(f"{path}: tools[{i}]: duplicate tool name {name!r}")
        seen.add(name)
    return tools


# ---------------------------------------------------------------------------------------------------------
# Demo backends: deterministic and offline. Swap for real APIs by registering a function of the same name.

_CONDITIONS = ("sunny", "partly cloudy", "cloudy", "light rain", "heavy rain", "thunderstorms", "fog", "snow")

# The demo clock: get_time answers as if it were this instant, so answers never change between runs.
DEMO_CLOCK = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)

# location (casefolded) -> (IANA zone, UTC offset in minutes at DEMO_CLOCK, i.e. with summer time where used).
_ZONES: dict[str, tuple[str, int]] = {
    "utc": ("UTC", 0),
    "london": ("Europe/London", 60),
    "paris": ("Europe/Paris", 120),
    "berlin": ("Europe/Berlin", 120),
    "madrid": ("Europe/Madrid", 120),
    "rome": ("Europe/Rome", 120),
    "moscow": ("Europe/Moscow", 180),
    "cairo": ("Africa/Cairo", 180),
    "dubai": ("Asia/Dubai", 240),
    "mumbai": ("Asia/Kolkata", 330),
    "new delhi": ("Asia/Kolkata", 330),
    "kathmandu": ("Asia/Kathmandu", 345),
    "bangkok": ("Asia/Bangkok", 420),
    "beijing": ("Asia/Shanghai", 480),
    "shanghai": ("Asia/Shanghai", 480),
    "singapore": ("Asia/Singapore", 480),
    "tokyo": ("Asia/Tokyo", 540),
    "seoul": ("Asia/Seoul", 540),
    "sydney": ("Australia/Sydney", 600),
    "auckland": ("Pacific/Auckland", 720),
    "honolulu": ("Pacific/Honolulu", -600),
    "los angeles": ("America/Los_Angeles", -420),
    "san francisco": ("America/Los_Angeles", -420),
    "denver": ("America/Denver", -360),
    "chicago": ("America/Chicago", -300),
    "new york": ("America/New_York", -240),
    "toronto": ("America/Toronto", -240),
    "sao paulo": ("America/Sao_Paulo", -180),
    "são paulo": ("America/Sao_Paulo", -180),
}


def get_weather(city: str) -> dict:
    """
    Get the current weather in a city.

    Args:
        city: The city name, e.g. "Beijing" or "San Francisco".
    """
    # A hash of the normalised name stands in for a weather service: stable across runs and machines.
    key = " ".join(city.split()).casefold()
    if not key:
        raise ValueError("city must not be empty")
    h = hashlib.sha256(key.encode("utf-8")).digest()
    return {
        "city": city,
        "temperature_c": h[0] % 41 - 5,  # -5 .. 35 °C
        "conditions": _CONDITIONS[h[1] % len(_CONDITIONS)],
        "humidity_pct": 20 + h[2] % 71,  # 20 .. 90 %
        "wind_kph": h[3] % 41,  # 0 .. 40 km/h
    }


def get_time(location: str) -> dict:
    """
    Get the current local time in a location.

    Args:
        location: A city name (e.g. "Tokyo", "New York") or "UTC".
    """
    key = " ".join(location.split()).casefold()
    if key not in _ZONES:
        raise ValueError(f"unknown location {location!r}; known: {', '.join(sorted(_ZONES))}")
    zone, minutes = _ZONES[key]
    local = DEMO_CLOCK.astimezone(timezone(timedelta(minutes=minutes)))
    sign = "+" if minutes >= 0 else "-"
    return {
        "location": location,
        "timezone": zone,
        "utc_offset": f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}",
        "local_time": local.isoformat(),
    }
