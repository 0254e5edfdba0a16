"""The `apis` environment: everyday tools with deterministic simulated backends, over one or more user turns.

    env = make_env("apis")
    messages = env.reset(env.tasks(split="held_out")[0])

Held-in tools: get_weather, get_time, calculate, convert_units, find_contact, send_message; held-out tools:
convert_currency, list_events, add_event, list_files, read_file (`apis_tools` has the backends, `apis_gen` the
tasks). A task is offered the tools of its split. A reply without tool calls ends the turn; `respond` then gives
the next user turn of a follow-up task ("And Shanghai?") or ends the episode.

Reward (`check_episode`, a pure function; 1.0 or 0.0): every turn's calls that succeeded match the gold calls, name
and arguments, in order from step to step and in any order within a step (parallel calls); a call that returned an
error is left out (it changed nothing, and recovering from it is allowed); and the turn's final answer states each
fact the tools returned (numbers compared as numbers, text without regard to case). For a request no tool can serve:
1.0 only when no call was made at all and the reply is not empty. `tasks_file` (optional): task records, one JSON
object per line, as `trajtune env tasks --env apis --with-gold` prints them.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from ..errors import TrajtuneError
from ..trajectory import InvalidRecord, Message, Tool, ToolCall, iter_lines, parse_line
from .apis_gen import SPLIT_TOOLS, generate_apis_tasks, resolve, say_text
from .apis_tools import SCHEMAS, TODAY, World, calculate, canonical_unit, describe
from .base import SPLITS, Environment, Task, Unsolvable, tool_error, tool_message

SYSTEM_PROMPT = (
    f"You are a helpful assistant with access to tools. Today is {TODAY}. Use the tools to answer; when calls do "
    "not depend on each other, make them together in one message. State the values the tools return in your answer. "
    "If none of your tools can do what is asked, say so plainly and do not call any tool."
)

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def states(text: str, fact: str) -> bool:
    """Whether `text` states `fact`: a number appears in it with that value, or the words appear (any case)."""
    try:
        value = float(fact)
    except ValueError:
        return " ".join(fact.split()).casefold() in " ".join(text.split()).casefold()
    return any(abs(float(m.replace(",", "")) - value) <= 1e-6 * max(1.0, abs(value)) for m in _NUMBER.findall(text))


def same_argument(key: str, got: Any, want: Any) -> bool:
    """An argument as a careful caller may write it: expressions by value, unit names by unit, currency codes and
    words without regard to case or spacing, numbers as numbers."""
    if key == "expression" and isinstance(got, str):
        try:
            return calculate(got)["result"] == calculate(want)["result"]
        except (ValueError, ArithmeticError):
            return False
    if key in ("from_unit", "to_unit") and isinstance(got, str):
        return canonical_unit(got) == canonical_unit(want)
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and abs(got - want) <= 1e-9 * max(1, abs(want))
    if isinstance(want, str) and isinstance(got, str):
        return " ".join(got.split()).casefold().strip("/") == " ".join(want.split()).casefold().strip("/")
    return got == want


def call_matches(made: dict[str, Any], gold: dict[str, Any]) -> bool:
    """A made call `{"name", "arguments"}` against a gold call (with `mentions`: text arguments that must state
    given facts)."""
    mentions = gold.get("mentions", {})
    args = made["arguments"]
    if made["name"] != gold["name"] or set(args) != set(gold["arguments"]) | set(mentions):
        return False
    return (all(same_argument(k, args[k], v) for k, v in gold["arguments"].items())
            and all(isinstance(args[k], str) and all(states(args[k], f) for f in facts) for k, facts in mentions.items()))


def _calls_reason(made: list[dict[str, Any]], steps: list[list[dict[str, Any]]]) -> str | None:
    """None when `made` matches the gold steps, else what is wrong."""
    expected = sum(len(step) for step in steps)
    if len(made) != expected:
        return f"{len(made)} successful calls where the task needs {expected}"
    i = 0
    for step in steps:
        left = list(step)
        for c in made[i : i + len(step)]:
            hit = next((g for g in left if call_matches(c, g)), None)
            if hit is None:
                return f"call {c['name']}({json.dumps(c['arguments'], ensure_ascii=False)}) matches no expected call"
            left.remove(hit)
        i += len(step)
    return None


def check_episode(gold: dict[str, Any], calls: list[list[dict[str, Any]]], answers: list[str],
                  attempted: int) -> tuple[bool, str]:
    """The verdict on an episode: `calls[t]` the successful calls of turn t, `answers[t]` its final reply, `attempted`
    every call made, failed ones included. Returns (passed, reason)."""
    if gold["unservable"]:
        if attempted:
            return False, f"{attempted} call(s) made for a request no tool serves"
        return (True, "ok") if answers and answers[0].strip() else (False, "no reply")
    for t, turn in enumerate(gold["turns"]):
        if t >= len(answers):
            return False, f"turn {t + 1}: no final answer"
        reason = _calls_reason(calls[t] if t < len(calls) else [], turn["calls"])
        if reason:
            return False, f"turn {t + 1}: {reason}"
        missing = [f for f in turn["facts"] if not states(answers[t], f)]
        if missing:
            return False, f"turn {t + 1}: the answer does not state {missing}"
    return True, "ok"


def load_task_records(path: str | Path) -> list[Task]:
    """apis task records from JSONL; TrajtuneError naming the file and line of one that is not a task."""
    tasks: list[Task] = []
    for lineno, raw in iter_lines(path):
        try:
            record = parse_line(raw)
        except InvalidRecord as e:
            raise TrajtuneError(f"{path}:{lineno}: {e.detail}") from None
        missing = [k for k in ("id", "split", "instruction", "gold") if k not in record]
        if missing or record["split"] not in SPLITS or "turns" not in record.get("gold", {}):
            raise TrajtuneError(f"{path}:{lineno}: not an apis task record (needs id, split held_in|held_out, "
                                "instruction and gold.turns, as `trajtune env tasks --env apis --with-gold` prints)")
        tasks.append(record)
    return tasks


_INTENT = {
    "get_weather": "check the weather in {city}", "get_time": "look up the time in {location}",
    "calculate": "calculate {expression}", "convert_units": "convert {value} {from_unit} to {to_unit}",
    "convert_currency": "convert {amount} {from_currency} to {to_currency}",
    "find_contact": "look up {name} in the address book", "send_message": "send the message to {to}",
    "list_events": "check the calendar for {date}", "add_event": "add {title} to the calendar on {date} at {time}",
    "list_files": "list the {directory} folder", "read_file": "read {path}",
}


class ApisEnv(Environment):
    """Simulated everyday APIs; see the module docstring."""

    name = "apis"

    def __init__(self, tasks_file: str | None = None, **options: Any) -> None:
        super().__init__(tasks_file, **options)
        self.reason = ""  # why the last reward() was what it was

    def tasks(self, split: str | None = None, n: int | None = None, seed: int = 0) -> list[Task]:
        if split is not None and split not in SPLITS:
            raise TrajtuneError(f"unknown split {split!r}; choose {' or '.join(SPLITS)}")
        tasks = load_task_records(self.tasks_file) if self.tasks_file else generate_apis_tasks(seed)
        tasks = [t for t in tasks if split is None or t["split"] == split]
        return tasks if n is None else tasks[:n]

    def tools(self) -> list[Tool]:
        assert self.task is not None, "reset first"
        return [copy.deepcopy(SCHEMAS[name]) for name in SPLIT_TOOLS[self.task["split"]]]  # type: ignore[misc]

    def reset(self, task: Task, seed: int = 0) -> list[Message]:
        self.task, self.done = task, False
        self._registry = World().registry(SPLIT_TOOLS[task["split"]])
        self._turn, self._calls, self._answers, self._attempted = 0, [[]], [], 0
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task["instruction"]}]

    def step(self, call: ToolCall) -> Message:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            self._attempted += 1
            return tool_error(call, "bad_call", f"a tool call needs a function name, got {str(call)[:200]}")
        if self.done:
            return tool_error(call, "episode_over", "the conversation is over")
        self._attempted += 1
        content = self._registry.execute(call)
        if not content.startswith('{"error"'):
            args = fn.get("arguments", {})
            self._calls[self._turn].append({"name": fn["name"], "arguments": json.loads(args or "{}")
                                            if isinstance(args, str) else args})
        return tool_message(call, content)

    def respond(self, reply: Message) -> Message | None:
        self._answers.append(reply.get("content") or "")
        turns = self.task["gold"]["turns"]  # type: ignore[index]
        if self._turn + 1 < len(turns):
            self._turn += 1
            self._calls.append([])
            return {"role": "user", "content": turns[self._turn]["user"]}
        self.done = True
        return None

    def reward(self) -> float:
        if self.task is None:
            return 0.0
        passed, self.reason = check_episode(self.task["gold"], self._calls, self._answers, self._attempted)
        return float(passed)

    # --- the oracle: the plan's next step with references filled from what came back, then what the tools said

    def oracle_act(self, messages: list[Message]) -> Message:
        assert self.task is not None, "reset first"
        gold = self.task["gold"]
        if gold["unservable"]:
            names = ", ".join(t["function"]["name"] for t in self.tools())
            return {"role": "assistant", "content": f"Sorry, I can't do that: none of my tools ({names}) can help "
                                                    "with this request, so I won't call any of them."}
        start = max(i for i, m in enumerate(messages) if m["role"] == "user")
        results: dict[str, dict[str, Any]] = {}
        said: list[str] = []
        made = 0
        for m in messages[start + 1 :]:
            made += len(m.get("tool_calls") or []) if m["role"] == "assistant" else 0
            if m["role"] == "tool":
                result = json.loads(m["content"])
                if "error" in result:
                    raise Unsolvable(f"{m['name']} failed: {result['error']['message']}")
                results[m["name"]] = result
                said.append(describe(m["name"], result))
        done = 0
        for s, step in enumerate(gold["turns"][self._turn]["plan"]):
            if made == done:
                return self._calls_message(step, results, first=s == 0, messages=messages)
            done += len(step)
        return {"role": "assistant", "content": " ".join(said)}

    def _calls_message(self, step: list[dict[str, Any]], results: dict[str, dict[str, Any]], first: bool,
                       messages: list[Message]) -> Message:
        n = sum(len(m.get("tool_calls") or []) for m in messages)
        calls, intents = [], []
        for i, planned in enumerate(step):
            args, say = resolve(planned["arguments"], results)
            intents.append(_INTENT[planned["name"]].format(**args))
            args |= {k: say_text(tools, results) for k, tools in say.items()}
            calls.append({"id": f"call_{n + i}", "type": "function",
                          "function": {"name": planned["name"], "arguments": args}})
        thought = ("I'll " if first else "With that, I'll ") + _join(intents) + (
            "; these don't depend on each other, so I'll make the calls together." if len(step) > 1 else ".")
        return {"role": "assistant", "content": thought, "tool_calls": calls}


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
