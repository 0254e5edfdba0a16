"""The environment interface: the worlds an agent acts in, for synthesis (rollouts), eval and chat.

An environment holds tools (OpenAI tool schemas), hidden state, and a list of tasks. An episode is

    messages = env.reset(task, seed)          # the first observation: system + user messages
    while not env.done:
        reply = policy.act(messages, env.tools())     # an assistant message: content and/or tool_calls
        messages.append(reply)
        for call in reply.get("tool_calls") or []:
            messages.append(env.step(call))   # a tool message answering that call (errors included)
        if not reply.get("tool_calls"):
            nxt = env.respond(reply)          # the next user turn (a follow-up), or None: the episode ends
            ...
    env.reward()                              # in [0, 1], from the final state and answers, never from the policy

(`agents/rollout.py` runs exactly this loop, with turn limits.) Contracts every environment keeps:
- Deterministic: the same task and seed give the same observations for the same calls.
- `step` never raises on a bad call (unknown tool, arguments that fail the schema, a failing backend): it returns
  a tool message whose content is `{"error": {"type", "message"}}`, as a real API would, so the agent can recover.
- Tasks are plain records `{id, env, split, instruction, gold, meta}`; `split` is "held_in" or "held_out" and is
  decided by tool / domain, never by instance, so held-out tasks need tools never seen in training.
- `gold` is for `reward` (and eval checkers) only: a policy never sees it. The oracle (`oracle_act`) solves a
  task from what its calls return, the way a careful agent would.
"""

from __future__ import annotations

import abc
import json
from typing import Any, ClassVar, Literal, TypedDict

from ..trajectory import InvalidRecord, Message, Tool, ToolCall, check_arguments

Split = Literal["held_in", "held_out"]
SPLITS: tuple[str, ...] = ("held_in", "held_out")


class Task(TypedDict, total=False):
    id: str  # unique within the environment, stable across runs (synthesis resumes by it)
    env: str  # the environment's name
    split: Split
    instruction: str  # the user's request, as the agent sees it
    gold: Any  # what `reward` compares against: hidden from the policy
    meta: dict[str, Any]  # domain, tools needed, generator template, ... (copied to the trajectory's meta)


def tool_error(call: ToolCall, kind: str, message: str) -> Message:
    """The tool message for a call that failed: `{"error": {"type": kind, "message": message}}`."""
    return tool_message(call, json.dumps({"error": {"type": kind, "message": message}}, ensure_ascii=False))


def tool_message(call: ToolCall, content: str) -> Message:
    """The canonical tool message answering `call` (its id and name) with `content`. A malformed call (not an
    object, no function name) is answered too, with an empty id or name: the agent sees why it failed."""
    call_dict: Any = call if isinstance(call, dict) else {}
    fn = call_dict.get("function")
    name = fn.get("name") if isinstance(fn, dict) and isinstance(fn.get("name"), str) else ""
    return {"role": "tool", "tool_call_id": str(call_dict.get("id", "")), "name": name, "content": content}


def call_arguments(call: ToolCall, name: str, params: dict[str, Any] | None = None
                   ) -> tuple[dict[str, Any], Message | None]:
    """(the arguments of `call` to tool `name` as an object, None), a JSON string parsed and checked against the
    tool's JSON Schema `params` when given; or ({}, the `bad_arguments` error observation answering the call, for
    `step` to return) when they are not JSON, not an object, or fail the schema."""
    args = call["function"].get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return {}, tool_error(call, "bad_arguments", f"arguments of {name} are not JSON: {e.msg} at char {e.pos}")
    if not isinstance(args, dict):
        return {}, tool_error(call, "bad_arguments", f"arguments of {name} must be an object")
    if params is not None:
        try:
            check_arguments(args, params, f"arguments of {name}")
        except InvalidRecord as e:
            return {}, tool_error(call, "bad_arguments", e.detail)
    return args, None


class Environment(abc.ABC):
    """One world. Subclasses set `name` and implement the abstract methods; see the module docstring."""

    name: ClassVar[str]

    def __init__(self, tasks_file: str | None = None, **options: Any) -> None:
        self.tasks_file = tasks_file
        self.options = options
        self.task: Task | None = None
        self.done = False

    @abc.abstractmethod
    def tasks(self, split: str | None = None, n: int | None = None, seed: int = 0) -> list[Task]:
        """The environment's tasks (from `tasks_file` and/or generated from `seed`), of `split` if given, the first
        `n` if given. Deterministic: the same arguments give the same list."""

    @abc.abstractmethod
    def tools(self) -> list[Tool]:
        """The tools offered for the current task (after `reset`), as OpenAI tool schemas."""

    @abc.abstractmethod
    def reset(self, task: Task, seed: int = 0) -> list[Message]:
        """Start an episode of `task`: fresh state, `done` False; return the first messages (system and user)."""

    @abc.abstractmethod
    def step(self, call: ToolCall) -> Message:
        """Run one tool call; return the tool message answering it. Never raises on a bad call (see `tool_error`)."""

    def respond(self, reply: Message) -> Message | None:
        """The next user message after an assistant reply without tool calls, or None when the episode is over (then
        `done` is True). Default: one user turn, so the first final answer ends the episode."""
        self.done = True
        return None

    @abc.abstractmethod
    def reward(self) -> float:
        """The episode's reward in [0, 1], from the final state and the answers given (checked against `gold`)."""

    def oracle_act(self, messages: list[Message]) -> Message:
        """The scripted solver's next assistant message for the current episode (a short thought, then calls or the
        final answer), from the conversation so far and what its calls returned, never from `gold` answers.
        Raises `Unsolvable` when the task cannot be solved that way (the run counts and lists those)."""
        raise NotImplementedError(f"environment {self.name!r} has no oracle")

    def close(self) -> None:
        """Release what the environment holds (databases, sandboxes, temporary directories)."""
        return None


class Unsolvable(Exception):
    """The oracle cannot solve this task from what the tools return (e.g. a reference query that does not reproduce
    the label); the message says why."""
