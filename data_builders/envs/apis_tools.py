"""The world behind the `apis` environment: simulated everyday APIs as typed, documented Python functions.

Every backend is deterministic and offline. Stateless ones are plain functions: `get_weather` and `get_time` (the
demo backends of `tools.py`, reused so `trajtune chat` offers the same tools), `calculate`, `convert_units`,
`convert_currency`, `find_contact`. Stateful ones are methods of a `World`, made fresh for each episode: messages
sent, the calendar, a small read-only file system. `World.registry(names)` is a `ToolRegistry` of the named tools,
so calls are validated and run the way `tools.py` runs them (errors come back as JSON, never as exceptions).

SCHEMAS holds each tool's OpenAI schema written out, so that building an episode never imports transformers;
tests/test_env_apis.py checks that they equal `function_to_tool` of the functions. `describe` says in one sentence
what a tool returned (the oracle's wording) and `canonical_unit` is the unit-name rule the reward shares.
"""

from __future__ import annotations

import ast
import hashlib
import math
import operator
import re
from typing import Any

from ..tools import DEMO_CLOCK, ToolRegistry, get_time, get_weather

# ---------------------------------------------------------------------------------------------------------
# Stateless backends


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and left and abs(right) * math.log10(abs(left)) > 300:
            raise ValueError("the power is too large (results up to 1e300)")  # 9**9**9 would hang the process
        return _BINARY[type(node.op)](left, right)
    raise ValueError(f"unsupported expression element {ast.dump(node)[:60]}: use numbers, + - * / // % ** and ()")


def calculate(expression: str) -> dict:
    """
    Evaluate an arithmetic expression.

    Args:
        expression: Numbers with + - * / // % ** and parentheses, e.g. "(12 + 30) * 1.5".
    """
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    value = _evaluate(tree.body)
    result = int(value) if float(value).is_integer() and abs(value) < 1e15 else round(value, 6)
    return {"expression": expression, "result": result}


# unit -> (dimension, factor to the base unit); temperatures are converted by formula
_UNITS: dict[str, tuple[str, float]] = {
    "m": ("length", 1.0), "km": ("length", 1000.0), "cm": ("length", 0.01), "mm": ("length", 0.001),
    "mi": ("length", 1609.344), "ft": ("length", 0.3048), "in": ("length", 0.0254), "yd": ("length", 0.9144),
    "kg": ("mass", 1.0), "g": ("mass", 0.001), "lb": ("mass", 0.45359237), "oz": ("mass", 0.028349523125),
    "l": ("volume", 1.0), "ml": ("volume", 0.001), "gal": ("volume", 3.785411784),
    "C": ("temperature", 1.0), "F": ("temperature", 1.0), "K": ("temperature", 1.0),
}
_ALIASES = {
    "meter": "m", "metre": "m", "kilometer": "km", "kilometre": "km", "centimeter": "cm", "centimetre": "cm",
    "millimeter": "mm", "millimetre": "mm", "mile": "mi", "foot": "ft", "feet": "ft", "inch": "in", "inches": "in",
    "yard": "yd", "kilogram": "kg", "kilo": "kg", "gram": "g", "pound": "lb", "lbs": "lb", "ounce": "oz",
    "liter": "l", "litre": "l", "milliliter": "ml", "millilitre": "ml", "gallon": "gal",
    "celsius": "C", "°c": "C", "c": "C", "fahrenheit": "F", "°f": "F", "f": "F", "kelvin": "K", "k": "K",
}


def canonical_unit(name: str) -> str | None:
    """The unit symbol a name stands for ("kilometres" -> "km", "°F" -> "F"), or None if unknown."""
    key = name.strip()
    if key in _UNITS:
        return key
    key = key.casefold()
    if key in _UNITS:
        return key
    return _ALIASES.get(key) or (_ALIASES.get(key[:-1]) if key.endswith("s") else None)


def convert_units(value: float, from_unit: str, to_unit: str) -> dict:
    """
    Convert a quantity between units of length, mass, volume or temperature.

    Args:
        value: The quantity to convert.
        from_unit: The unit of value, e.g. "km", "lb", "C" (Celsius), "gal".
        to_unit: The unit wanted, e.g. "mi", "kg", "F" (Fahrenheit), "l".
    """
    src, dst = canonical_unit(from_unit), canonical_unit(to_unit)
    for given, unit in ((from_unit, src), (to_unit, dst)):
        if unit is None:
            raise ValueError(f"unknown unit {given!r}; known: {', '.join(_UNITS)}")
    if _UNITS[src][0] != _UNITS[dst][0]:
        raise ValueError(f"cannot convert {_UNITS[src][0]} ({src}) to {_UNITS[dst][0]} ({dst})")
    if _UNITS[src][0] == "temperature":
        kelvin = {"C": value + 273.15, "F": (value - 32) * 5 / 9 + 273.15, "K": value}[src]
        result = {"C": kelvin - 273.15, "F": (kelvin - 273.15) * 9 / 5 + 32, "K": kelvin}[dst]
    else:
        result = value * _UNITS[src][1] / _UNITS[dst][1]
    return {"value": value, "from_unit": src, "to_unit": dst, "result": round(result, 2)}


# Units of currency per US dollar, fixed at the demo clock (2024-06-01).
_PER_USD = {"USD": 1.0, "EUR": 0.92, "GBP": 0.785, "JPY": 157.2, "CHF": 0.902, "CAD": 1.364, "AUD": 1.503,
            "CNY": 7.24, "INR": 83.4}


def convert_currency(amount: float, from_currency: str, to_currency: str) -> dict:
    """
    Convert an amount of money between currencies at today's rate.

    Args:
        amount: The amount to convert.
        from_currency: ISO code of the amount's currency, e.g. "USD".
        to_currency: ISO code of the currency wanted, e.g. "EUR".
    """
    src, dst = from_currency.strip().upper(), to_currency.strip().upper()
    for code in (src, dst):
        if code not in _PER_USD:
            raise ValueError(f"unknown currency {code!r}; known: {', '.join(_PER_USD)}")
    rate = _PER_USD[dst] / _PER_USD[src]
    return {"amount": amount, "from_currency": src, "to_currency": dst, "rate": round(rate, 4),
            "result": round(amount * rate, 2)}


CONTACTS = [
    {"name": "Alice Martin", "phone": "+1-555-0101", "email": "alice.martin@example.com", "city": "Paris"},
    {"name": "Bruno Silva", "phone": "+1-555-0102", "email": "bruno.silva@example.com", "city": "Sao Paulo"},
    {"name": "Chen Wei", "phone": "+1-555-0103", "email": "chen.wei@example.com", "city": "Shanghai"},
    {"name": "Divya Rao", "phone": "+1-555-0104", "email": "divya.rao@example.com", "city": "Mumbai"},
    {"name": "Emma Novak", "phone": "+1-555-0105", "email": "emma.novak@example.com", "city": "Berlin"},
    {"name": "Felix Wagner", "phone": "+1-555-0106", "email": "felix.wagner@example.com", "city": "Toronto"},
    {"name": "Grace Kim", "phone": "+1-555-0107", "email": "grace.kim@example.com", "city": "Seoul"},
    {"name": "Hana Sato", "phone": "+1-555-0108", "email": "hana.sato@example.com", "city": "Tokyo"},
]


def find_contact(name: str) -> dict:
    """
    Look up a contact in the address book by full or first name.

    Args:
        name: The contact's name, e.g. "Alice Martin" or "Alice".
    """
    key = " ".join(name.split()).casefold()
    hits = [c for c in CONTACTS if key in (c["name"].casefold(), c["name"].split()[0].casefold())]
    if len(hits) != 1:
        raise ValueError(f"no contact named {name!r}" if not hits else f"several contacts match {name!r}")
    return dict(hits[0])


# ---------------------------------------------------------------------------------------------------------
# Stateful backends: one World per episode

_EVENT_TITLES = ["Team standup", "Dentist", "Lunch with Sam", "Gym", "Project review", "Call with the bank",
                 "Piano lesson", "Book club", "Flight check-in", "Yoga"]
_EVENT_TIMES = ["08:30", "09:00", "10:00", "11:30", "13:00", "14:00", "15:30", "17:00", "18:30", "20:00"]
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")

FILES = {  # path -> content
    "notes/todo.txt": "Buy milk, call the plumber, renew the passport.",
    "notes/ideas.txt": "A bike-sharing app for dog walkers.",
    "reports/q1.txt": "Q1 revenue was 1.2 million EUR, up 8% on last year.",
    "reports/q2.txt": "Q2 revenue was 1.35 million EUR, up 12% on last year.",
    "drafts/letter.txt": "Dear Ms. Okafor, thank you for your kind offer.",
    "recipes/pancakes.txt": "Mix 200 g flour, 2 eggs and 300 ml milk; rest 20 minutes.",
}


def base_events(date: str) -> list[dict[str, str]]:
    """The calendar's own events on `date` (1 to 3, from a hash of the date: the same every run)."""
    h = hashlib.sha256(date.encode()).digest()
    times = sorted({_EVENT_TIMES[b % len(_EVENT_TIMES)] for b in h[1 : 2 + h[0] % 3]})
    return [{"time": t, "title": _EVENT_TITLES[h[10 + i] % len(_EVENT_TITLES)]} for i, t in enumerate(times)]


class World:
    """The state one episode changes: messages sent and events added. Files are read-only."""

    def __init__(self) -> None:
        self.sent: list[dict[str, str]] = []
        self.added: list[dict[str, str]] = []

    def send_message(self, to: str, text: str) -> dict:
        """
        Send a text message to a phone number.

        Args:
            to: The recipient's phone number, e.g. "+1-555-0100" (find it with find_contact).
            text: The message to send.
        """
        if to.strip() not in {c["phone"] for c in CONTACTS}:
            raise ValueError(f"{to!r} is not a phone number in the address book; look it up with find_contact")
        if not text.strip():
            raise ValueError("the message text is empty")
        self.sent.append({"to": to.strip(), "text": text})
        return {"status": "sent", "to": to.strip(), "message_id": f"msg_{len(self.sent)}"}

    def list_events(self, date: str) -> dict:
        """
        List the events on the calendar on a date.

        Args:
            date: The date as YYYY-MM-DD, e.g. "2024-06-03".
        """
        if not _DATE.match(date.strip()):
            raise ValueError(f"date must be YYYY-MM-DD, got {date!r}")
        date = date.strip()
        events = base_events(date) + [{"time": e["time"], "title": e["title"]} for e in self.added if e["date"] == date]
        return {"date": date, "events": sorted(events, key=lambda e: e["time"])}

    def add_event(self, date: str, time: str, title: str) -> dict:
        """
        Add an event to the calendar.

        Args:
            date: The date as YYYY-MM-DD, e.g. "2024-06-03".
            time: The start time as HH:MM (24-hour), e.g. "14:30".
            title: What the event is, e.g. "Dentist".
        """
        if not _DATE.match(date.strip()) or not _TIME.match(time.strip()):
            raise ValueError(f"date must be YYYY-MM-DD and time HH:MM, got {date!r} and {time!r}")
        self.added.append({"date": date.strip(), "time": time.strip(), "title": title.strip()})
        return {"status": "added", "event_id": f"evt_{len(self.added)}", "date": date.strip(), "time": time.strip(),
                "title": title.strip()}

    def list_files(self, directory: str) -> dict:
        """
        List the files in a directory of the user's documents.

        Args:
            directory: The directory, e.g. "notes".
        """
        key = directory.strip().strip("/")
        files = sorted(p for p in FILES if p.rsplit("/", 1)[0] == key)
        if not files:
            dirs = sorted({p.rsplit("/", 1)[0] for p in FILES})
            raise ValueError(f"no directory {directory!r}; there are: {', '.join(dirs)}")
        return {"directory": key, "files": files}

    def read_file(self, path: str) -> dict:
        """
        Read a text file from the user's documents.

        Args:
            path: The file's path, e.g. "notes/todo.txt".
        """
        key = path.strip().strip("/")
        if key not in FILES:
            raise ValueError(f"no file {path!r}; list a directory with list_files")
        return {"path": key, "content": FILES[key]}

    def registry(self, names: list[str]) -> ToolRegistry:
        """A ToolRegistry of the named tools, bound to this world."""
        registry = ToolRegistry()
        for name in names:
            fn = STATELESS.get(name) or getattr(self, name)
            registry.register(fn, tool=SCHEMAS[name])
        return registry


STATELESS = {f.__name__: f for f in (get_weather, get_time, calculate, convert_units, convert_currency, find_contact)}
STATEFUL = ("send_message", "list_events", "add_event", "list_files", "read_file")
TODAY = DEMO_CLOCK.date().isoformat()


# ---------------------------------------------------------------------------------------------------------
# Schemas (what function_to_tool gives for each function above; tests keep the two equal)


def _schema(tool: str, description: str, **params: tuple[str, str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": tool, "description": description, "parameters": {
        "type": "object", "properties": {p: {"type": t, "description": d} for p, (t, d) in params.items()},
        "required": list(params)}}}


SCHEMAS: dict[str, dict[str, Any]] = {s["function"]["name"]: s for s in [
    _schema("get_weather", "Get the current weather in a city.",
            city=("string", 'The city name, e.g. "Beijing" or "San Francisco".')),
    _schema("get_time", "Get the current local time in a location.",
            location=("string", 'A city name (e.g. "Tokyo", "New York") or "UTC".')),
    _schema("calculate", "Evaluate an arithmetic expression.",
            expression=("string", 'Numbers with + - * / // % ** and parentheses, e.g. "(12 + 30) * 1.5".')),
    _schema("convert_units", "Convert a quantity between units of length, mass, volume or temperature.",
            value=("number", "The quantity to convert."),
            from_unit=("string", 'The unit of value, e.g. "km", "lb", "C" (Celsius), "gal".'),
            to_unit=("string", 'The unit wanted, e.g. "mi", "kg", "F" (Fahrenheit), "l".')),
    _schema("convert_currency", "Convert an amount of money between currencies at today's rate.",
            amount=("number", "The amount to convert."),
            from_currency=("string", 'ISO code of the amount\'s currency, e.g. "USD".'),
            to_currency=("string", 'ISO code of the currency wanted, e.g. "EUR".')),
    _schema("find_contact", "Look up a contact in the address book by full or first name.",
            name=("string", 'The contact\'s name, e.g. "Alice Martin" or "Alice".')),
    _schema("send_message", "Send a text message to a phone number.",
            to=("string", 'The recipient\'s phone number, e.g. "+1-555-0100" (find it with find_contact).'),
            text=("string", "The message to send.")),
    _schema("list_events", "List the events on the calendar on a date.",
            date=("string", 'The date as YYYY-MM-DD, e.g. "2024-06-03".')),
    _schema("add_event", "Add an event to the calendar.",
            date=("string", 'The date as YYYY-MM-DD, e.g. "2024-06-03".'),
            time=("string", 'The start time as HH:MM (24-hour), e.g. "14:30".'),
            title=("string", 'What the event is, e.g. "Dentist".')),
    _schema("list_files", "List the files in a directory of the user's documents.",
            directory=("string", 'The directory, e.g. "notes".')),
    _schema("read_file", "Read a text file from the user's documents.",
            path=("string", 'The file\'s path, e.g. "notes/todo.txt".')),
]}


# ---------------------------------------------------------------------------------------------------------
# What a result says, in one sentence (the oracle's answers; every value a task checks for appears in it)


def describe(name: str, r: dict[str, Any]) -> str:
    """One sentence stating what tool `name` returned in `r`."""
    if name == "get_weather":
        return (f"In {r['city']} it is {r['temperature_c']} °C and {r['conditions']}, humidity {r['humidity_pct']}%, "
                f"wind {r['wind_kph']} km/h.")
    if name == "get_time":
        return (f"In {r['location']} it is {r['local_time'][11:16]} on {r['local_time'][:10]} "
                f"({r['timezone']}, UTC{r['utc_offset']}).")
    if name == "calculate":
        return f"{r['expression']} = {r['result']}."
    if name == "convert_units":
        return f"{r['value']} {r['from_unit']} is {r['result']} {r['to_unit']}."
    if name == "convert_currency":
        return f"{r['amount']} {r['from_currency']} is {r['result']} {r['to_currency']} (rate {r['rate']})."
    if name == "find_contact":
        return f"{r['name']}: phone {r['phone']}, email {r['email']}, lives in {r['city']}."
    if name == "send_message":
        return f"The message to {r['to']} was sent ({r['message_id']})."
    if name == "list_events":
        events = "; ".join(f"{e['time']} {e['title']}" for e in r["events"]) or "nothing"
        return f"On {r['date']} the calendar has: {events}."
    if name == "add_event":
        return f"Added \"{r['title']}\" on {r['date']} at {r['time']} ({r['event_id']})."
    if name == "list_files":
        return f"{r['directory']}/ holds {', '.join(r['files'])}."
    if name == "read_file":
        return f"{r['path']} says: \"{r['content']}\""
    return f"{name} returned {r}."
