"""Generated tasks for the `apis` environment: templates x entity pools x phrasings, deterministic from a seed.

A task is one or more user turns. Each turn has a plan, steps of calls (the calls in one step are independent and
go out together), whose arguments are literals or references to what an earlier call of the turn returned:
`{"$from": "find_contact", "field": "city"}` (a field of its result; `"index": 0` picks from a list) or
`{"$say": ["get_time"]}` (free text that must state what those calls returned). The generator runs the plan on a
fresh `World` to fix the gold: the calls with every reference resolved (`$say` arguments become `mentions`: values
the text must contain) and the facts the turn's final answer must state. Kinds: single calls, parallel calls,
sequential (dependent) calls, follow-up turns ("And Shanghai?"), and requests no tool can serve (gold: no call).

Split by domain: weather, time, calculator, units and contacts/messages are held-in; currency, calendar and files
are held-out, and a held-out task is offered and needs held-out tools only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from .apis_tools import CONTACTS, FILES, SCHEMAS, World, describe

DOMAINS: dict[str, list[str]] = {
    "weather": ["get_weather"], "time": ["get_time"], "calculator": ["calculate"], "units": ["convert_units"],
    "contacts": ["find_contact", "send_message"],
    "currency": ["convert_currency"], "calendar": ["list_events", "add_event"], "files": ["list_files", "read_file"],
}
HELD_OUT_DOMAINS = ("currency", "calendar", "files")
SPLIT_TOOLS = {"held_in": [t for d, ts in DOMAINS.items() if d not in HELD_OUT_DOMAINS for t in ts],
               "held_out": [t for d in HELD_OUT_DOMAINS for t in DOMAINS[d]]}
PER_TEMPLATE = 4
assert set(SCHEMAS) == {t for ts in DOMAINS.values() for t in ts}

_CITIES = ["London", "Paris", "Berlin", "Madrid", "Rome", "Cairo", "Dubai", "Mumbai", "Bangkok", "Beijing", "Shanghai",
           "Singapore", "Tokyo", "Seoul", "Sydney", "Auckland", "Honolulu", "Los Angeles", "Chicago", "New York",
           "Toronto", "Moscow"]
_CONVERSIONS = [("km", "mi", "kilometres", "miles"), ("mi", "km", "miles", "kilometres"), ("m", "ft", "metres", "feet"),
                ("kg", "lb", "kilograms", "pounds"), ("lb", "kg", "pounds", "kilograms"), ("C", "F", "°C", "°F"),
                ("F", "C", "°F", "°C"), ("l", "gal", "litres", "gallons"), ("cm", "in", "centimetres", "inches")]
_CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "CNY", "INR"]
_DATES = [f"2024-06-{d:02d}" for d in range(2, 29)]
_UNSERVABLE = {
    "held_in": ["Book me a flight from Paris to Rome next Friday.", "Order a large pepperoni pizza to my place.",
                "Play my workout playlist.", "Turn off the lights in the living room.",
                "Reserve a table for two at an Italian restaurant tonight.", "Buy two tickets for tonight's concert."],
    "held_out": ["Transfer 200 dollars from my checking account to my savings.", "Call me a taxi to the airport.",
                 "Translate 'good morning' into Japanese.", "What's the weather in Oslo tomorrow?",
                 "Send Alice a text saying I'm running late.", "What time is it in Tokyo?"],
}


def ref(tool: str, field: str, index: int | None = None) -> dict[str, Any]:
    """An argument taken from the result of the turn's earlier call to `tool`."""
    return {"$from": tool, "field": field} | ({"index": index} if index is not None else {})


def call(name: str, /, **arguments: Any) -> dict[str, Any]:
    """A planned call (positional `name`: tools have an argument called name too)."""
    return {"name": name, "arguments": arguments}


def facts_of(name: str, r: dict[str, Any]) -> list[str]:
    """The values a final answer built on this result must state (each appears in `describe(name, r)`)."""
    if name == "get_weather":
        return [str(r["temperature_c"]), r["conditions"]]
    if name == "get_time":
        return [r["local_time"][11:16]]
    if name in ("calculate", "convert_units", "convert_currency"):
        return [str(r["result"])]
    if name == "find_contact":
        return [r["phone"]]
    if name == "list_events":
        return [e["title"] for e in r["events"]]
    if name == "add_event":
        return [r["title"]]
    if name == "list_files":
        return [p.rsplit("/", 1)[1] for p in r["files"]]
    if name == "read_file":
        return [r["content"]]
    return []


def resolve(arguments: dict[str, Any], results: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, list]]:
    """A planned call's arguments with references filled from `results` (tool -> its result in this turn), and the
    `$say` arguments as {argument: [tools whose results the text must state]}; the text itself is left out."""
    args, say = {}, {}
    for key, value in arguments.items():
        if isinstance(value, dict) and "$from" in value:
            picked = results[value["$from"]][value["field"]]
            args[key] = picked[value["index"]] if "index" in value else picked
        elif isinstance(value, dict) and "$say" in value:
            say[key] = value["$say"]
        else:
            args[key] = value
    return args, say


def say_text(tools: list[str], results: dict[str, dict[str, Any]]) -> str:
    """Free text stating what `tools` returned (what the oracle writes for a `$say` argument)."""
    return " ".join(describe(t, results[t]) for t in tools)


# ---------------------------------------------------------------------------------------------------------
# Templates: rng -> (kind, domains, turns); a turn is (user text, plan, tools whose results the answer states)

Turn = tuple[str, list[list[dict[str, Any]]], list[str]]
Template = Callable[[random.Random], tuple[str, list[str], list[Turn]]]


def _weather(rng: random.Random):
    city = rng.choice(_CITIES)
    q = rng.choice([f"What's the weather like in {city}?", f"How's the weather in {city} right now?",
                    f"Is it warm in {city} today? Tell me the current weather."])
    return "single", ["weather"], [(q, [[call("get_weather", city=city)]], ["get_weather"])]


def _time(rng: random.Random):
    city = rng.choice(_CITIES)
    q = rng.choice([f"What time is it in {city}?", f"Tell me the current local time in {city}."])
    return "single", ["time"], [(q, [[call("get_time", location=city)]], ["get_time"])]


def _calc(rng: random.Random):
    a, b, c = rng.randint(12, 999), rng.randint(2, 60), rng.randint(1, 500)
    expr = rng.choice([f"{a} * {b} + {c}", f"({a} + {c}) * {b}", f"{a} * {b} - {c}"])
    q = rng.choice([f"What is {expr}?", f"Calculate {expr} for me.", f"Can you compute {expr}?"])
    return "single", ["calculator"], [(q, [[call("calculate", expression=expr)]], ["calculate"])]


def _units(rng: random.Random):
    src, dst, src_name, dst_name = rng.choice(_CONVERSIONS)
    value = rng.randint(2, 250)
    q = rng.choice([f"How many {dst_name} is {value} {src_name}?", f"Convert {value} {src_name} to {dst_name}."])
    return "single", ["units"], [(q, [[call("convert_units", value=value, from_unit=src, to_unit=dst)]],
                                  ["convert_units"])]


def _phone(rng: random.Random):
    who = rng.choice(CONTACTS)["name"]
    q = rng.choice([f"What's {who}'s phone number?", f"Look up the phone number of {who}."])
    return "single", ["contacts"], [(q, [[call("find_contact", name=who)]], ["find_contact"])]


def _weather_parallel(rng: random.Random):
    cities = rng.sample(_CITIES, 3)
    q = f"What's the weather in {cities[0]}, {cities[1]} and {cities[2]}?"
    return "parallel", ["weather"], [(q, [[call("get_weather", city=c) for c in cities]], ["get_weather"])]


def _time_parallel(rng: random.Random):
    a, b = rng.sample(_CITIES, 2)
    q = rng.choice([f"What time is it in {a} and in {b}?", f"Give me the local time in both {a} and {b}."])
    return "parallel", ["time"], [(q, [[call("get_time", location=a), call("get_time", location=b)]], ["get_time"])]


def _weather_of_contact(rng: random.Random):
    who = rng.choice(CONTACTS)["name"].split()[0]
    q = rng.choice([f"What's the weather where {who} lives?", f"How is the weather in {who}'s city?"])
    plan = [[call("find_contact", name=who)], [call("get_weather", city=ref("find_contact", "city"))]]
    return "sequential", ["contacts", "weather"], [(q, plan, ["get_weather"])]


def _text_time(rng: random.Random):
    who, city = rng.choice(CONTACTS)["name"], rng.choice(_CITIES)
    q = rng.choice([f"Text {who} the current time in {city}.", f"Send {who} a message telling them the time in {city}."])
    plan = [[call("find_contact", name=who), call("get_time", location=city)],
            [call("send_message", to=ref("find_contact", "phone"), text={"$say": ["get_time"]})]]
    return "sequential", ["contacts", "time"], [(q, plan, ["get_time"])]


def _follow_up(domain: str, tool: str, arg: str):
    def template(rng: random.Random):
        a, b = rng.sample(_CITIES, 2)
        first = {"get_weather": f"What's the weather in {a}?", "get_time": f"What time is it in {a}?"}[tool]
        then = rng.choice([f"And {b}?", f"What about {b}?", f"And in {b}?"])
        return "follow_up", [domain], [(first, [[call(tool, **{arg: a})]], [tool]),
                                       (then, [[call(tool, **{arg: b})]], [tool])]
    return template


def _units_follow_up(rng: random.Random):
    value = rng.randint(2, 250)
    return "follow_up", ["units"], [
        (f"How many miles is {value} km?", [[call("convert_units", value=value, from_unit="km", to_unit="mi")]],
         ["convert_units"]),
        ("And in feet?", [[call("convert_units", value=value, from_unit="km", to_unit="ft")]], ["convert_units"])]


def _currency(rng: random.Random):
    src, dst = rng.sample(_CURRENCIES, 2)
    amount = rng.choice([20, 50, 75, 100, 250, 1000, 1500])
    q = rng.choice([f"How much is {amount} {src} in {dst}?", f"Convert {amount} {src} to {dst}."])
    return "single", ["currency"], [(q, [[call("convert_currency", amount=amount, from_currency=src,
                                                    to_currency=dst)]], ["convert_currency"])]


def _currency_parallel(rng: random.Random):
    src, a, b = rng.sample(_CURRENCIES, 3)
    amount = rng.choice([40, 100, 300, 500])
    q = f"Convert {amount} {src} to {a} and to {b}."
    plan = [[call("convert_currency", amount=amount, from_currency=src, to_currency=c) for c in (a, b)]]
    return "parallel", ["currency"], [(q, plan, ["convert_currency"])]


def _currency_follow_up(rng: random.Random):
    src, a, b = rng.sample(_CURRENCIES, 3)
    return "follow_up", ["currency"], [
        (f"How much is 100 {src} in {a}?", [[call("convert_currency", amount=100, from_currency=src, to_currency=a)]],
         ["convert_currency"]),
        (f"And in {b}?", [[call("convert_currency", amount=100, from_currency=src, to_currency=b)]],
         ["convert_currency"])]


def _events(rng: random.Random):
    date = rng.choice(_DATES)
    q = rng.choice([f"What's on my calendar on {date}?", f"What do I have scheduled for {date}?"])
    return "single", ["calendar"], [(q, [[call("list_events", date=date)]], ["list_events"])]


def _events_parallel(rng: random.Random):
    a, b = sorted(rng.sample(_DATES, 2))
    q = f"What do I have on {a} and on {b}?"
    return "parallel", ["calendar"], [(q, [[call("list_events", date=a), call("list_events", date=b)]],
                                       ["list_events"])]


def _add_event(rng: random.Random):
    date, time = rng.choice(_DATES), rng.choice(["09:15", "12:30", "16:00", "19:45"])
    title = rng.choice(["Dentist", "Coffee with Priya", "Car service", "Parents' evening"])
    q = rng.choice([f"Put \"{title}\" on my calendar on {date} at {time}.", f"Add {title} to {date} at {time}."])
    return "single", ["calendar"], [(q, [[call("add_event", date=date, time=time, title=title)]], ["add_event"])]


_DIRS = sorted({p.rsplit("/", 1)[0] for p in FILES})


def _list_files(rng: random.Random):
    d = rng.choice(_DIRS)
    q = rng.choice([f"Which files are in my {d} folder?", f"List what's in {d}."])
    return "single", ["files"], [(q, [[call("list_files", directory=d)]], ["list_files"])]


def _read_file(rng: random.Random):
    path = rng.choice(sorted(FILES))
    q = rng.choice([f"What does {path} say?", f"Read me the file {path}."])
    return "single", ["files"], [(q, [[call("read_file", path=path)]], ["read_file"])]


def _read_only_file(rng: random.Random):
    d = rng.choice([d for d in _DIRS if sum(p.startswith(d + "/") for p in FILES) == 1])
    q = f"There's a single file in my {d} folder; what does it say?"
    plan = [[call("list_files", directory=d)], [call("read_file", path=ref("list_files", "files", 0))]]
    return "sequential", ["files"], [(q, plan, ["read_file"])]


def _unservable(split: str):
    def template(rng: random.Random):
        return "unservable", [], [(rng.choice(_UNSERVABLE[split]), [], [])]
    return template


TEMPLATES: dict[str, tuple[str, Template]] = {  # name -> (split, template)
    "weather": ("held_in", _weather), "time": ("held_in", _time), "calculate": ("held_in", _calc),
    "units": ("held_in", _units), "phone": ("held_in", _phone), "weather_parallel": ("held_in", _weather_parallel),
    "time_parallel": ("held_in", _time_parallel), "weather_of_contact": ("held_in", _weather_of_contact),
    "text_time": ("held_in", _text_time),
    "weather_follow_up": ("held_in", _follow_up("weather", "get_weather", "city")),
    "time_follow_up": ("held_in", _follow_up("time", "get_time", "location")),
    "units_follow_up": ("held_in", _units_follow_up), "unservable_in": ("held_in", _unservable("held_in")),
    "currency": ("held_out", _currency), "currency_parallel": ("held_out", _currency_parallel),
    "currency_follow_up": ("held_out", _currency_follow_up), "events": ("held_out", _events),
    "events_parallel": ("held_out", _events_parallel), "add_event": ("held_out", _add_event),
    "list_files": ("held_out", _list_files), "read_file": ("held_out", _read_file),
    "read_only_file": ("held_out", _read_only_file), "unservable_out": ("held_out", _unservable("held_out")),
}


# ---------------------------------------------------------------------------------------------------------


def _gold_turns(turns: list[Turn], split: str) -> list[dict[str, Any]]:
    """Run each turn's plan on a fresh world: resolved calls, mentions, and the facts the answer must state."""
    registry = World().registry(SPLIT_TOOLS[split])
    out = []
    for user, plan, answer_from in turns:
        results: dict[str, dict[str, Any]] = {}
        facts: list[str] = []
        steps = []
        for step in plan:
            resolved = []
            for planned in step:
                args, say = resolve(planned["arguments"], results)
                sent = args | {k: say_text(tools, results) for k, tools in say.items()}
                result = json.loads(registry.execute({"name": planned["name"], "arguments": sent}))
                assert "error" not in result, (planned, result)  # a template bug, not a task
                gold_call = {"name": planned["name"], "arguments": args}
                if say:
                    gold_call["mentions"] = {k: [f for t in tools for f in facts_of(t, results[t])]
                                             for k, tools in say.items()}
                resolved.append(gold_call)
                results[planned["name"]] = result
                if planned["name"] in answer_from:
                    facts += facts_of(planned["name"], result)
            steps.append(resolved)
        out.append({"user": user, "plan": plan, "calls": steps, "facts": facts})
    return out


def generate_apis_tasks(seed: int = 0) -> list[dict[str, Any]]:
    """Every generated task for `seed` (PER_TEMPLATE distinct instances of each template), in a seeded order."""
    tasks = []
    for name, (split, template) in TEMPLATES.items():
        rng = random.Random(f"apis/{seed}/{name}")  # one stream per template: adding one changes no other
        seen: set[str] = set()
        for _ in range(PER_TEMPLATE * 8):  # draws until PER_TEMPLATE distinct instances (small pools repeat)
            if len(seen) == PER_TEMPLATE:
                break
            kind, domains, turns = template(rng)
            key = json.dumps(turns)
            if key in seen:
                continue
            seen.add(key)
            gold = {"unservable": kind == "unservable", "turns": _gold_turns(turns, split)}
            used = sorted({c["name"] for _, plan, _ in turns for step in plan for c in step})
            tasks.append({"id": f"gen{seed}-{name}-{len(seen) - 1}", "env": "apis", "split": split,
                          "instruction": turns[0][0], "gold": gold,
                          "meta": {"source": "generated", "template": name, "kind": kind, "domains": domains,
                                   "tools": used, "turns": len(turns)}})
    random.Random(f"apis/{seed}/order").shuffle(tasks)
    return tasks

