"""The rollout loop: a policy acting in an environment over many turns, written as a canonical trajectory.

`rollout(env, policy, task)` runs one episode exactly as `envs/base.py`'s docstring shows; `rollout_batch(
env_factory, policy, tasks)` runs many in lockstep (up to `batch_size` at a time, a finished episode's slot taken
by the next task), so that a batched policy (`hf:`) generates one turn of every live episode in one call.

Per turn (one assistant message):
- the reply is checked (`policy.check_reply`): calls must name a tool of the task with arguments its schema
  accepts. A reply whose calls could not be read (`PARSE_ERROR`) is kept as the assistant's text, and the agent is
  answered with a user message `{"error": {"type", "message"}}`, the shape of a tool error, so it can try again;
- each call runs through `env.step` in a worker thread: one that takes longer than `call_timeout` seconds is
  answered `{"error": {"type": "timeout"}}` (later calls of the episode wait behind it, never racing it);
  a tool's content longer than `max_observation_chars` is cut and marked `[truncated: N more characters]`;
- a reply without calls goes to `env.respond`: the next user turn, or the end of the episode.
The episode ends when the environment is done, after `max_turns` assistant messages, or when the oracle raises
`Unsolvable`. Output (checked with `validate_record`): the env's tools, the messages, and `meta` with the task's
own meta plus `env`, `task_id`, `split`, `policy`, `reward`, `turns`, `end` (done | max_turns | unsolvable),
`seed`, `format_errors` and `timeouts` (and `unsolvable`: the oracle's reason).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from ..envs.base import Environment, Task, Unsolvable, tool_error
from ..errors import TrajtuneError
from ..trajectory import InvalidRecord, Message, ToolCall, Trajectory, validate_record
from .policy import PARSE_ERROR, Policy, check_reply

TRUNCATED = "\n[truncated: {n} more characters]"


class _Episode:
    """One live episode: its environment, the conversation so far, and its counters."""

    def __init__(self, env: Environment, policy: Policy, task: Task, seed: int, max_turns: int,
                 call_timeout: float | None, max_observation_chars: int | None) -> None:
        self.env, self.task, self.seed = env, task, seed
        self.policy = policy.bind(env)
        self.max_turns, self.call_timeout, self.max_chars = max_turns, call_timeout, max_observation_chars
        self.messages: list[Message] = list(env.reset(task, seed))
        self.tools = env.tools()
        self.turns = self.format_errors = self.timeouts = 0
        self.end: str | None = None
        self.unsolvable: str | None = None
        self.lock = threading.Lock()  # held by the call running on env (an abandoned one may hold it for long)
        self.ids: set[str] = set()

    def observe(self, reply: Any) -> None:
        """Take the policy's reply: append it and the environment's answers; decide whether the episode ends."""
        if not isinstance(reply, dict) or reply.get("role", "assistant") != "assistant":
            raise TrajtuneError(f"policy {self.policy.name} returned {str(reply)[:200]!r}; act must return an "
                                "assistant message (a dict with content and/or tool_calls)")
        self.turns += 1
        reply = check_reply({**reply, "role": "assistant"}, self.tools)
        error = reply.pop(PARSE_ERROR, None)  # check_reply copied any reply it changed; this one is ours
        calls = list(reply.get("tool_calls") or [])
        if error is not None:
            self.format_errors += 1
            self.messages.append({"role": "assistant", "content": str(reply.get("content") or "")})
            self.messages.append({"role": "user", "content": json.dumps({"error": {
                "type": error.get("type", "parse_error"), "message": f"{error.get('message', '')}. Your reply could "
                "not be read as tool calls: call the tools in the format they were described in, or answer in "
                "plain text."}}, ensure_ascii=False)})
        elif calls:
            calls = [self._unique_id(c) for c in calls]
            self.messages.append({"role": "assistant", "content": reply.get("content") or None, "tool_calls": calls})
            for call in calls:
                self.messages.append(self._capped(self._step(call)))
            if self.env.done:
                self.end = "done"
        else:
            message: Message = {"role": "assistant", "content": str(reply.get("content") or "")}
            self.messages.append(message)
            nxt = self.env.respond(message)
            if nxt is None:
                self.end = "done"
            else:
                self.messages.append(nxt)
        if self.end is None and self.turns >= self.max_turns:
            self.end = "max_turns"

    def _unique_id(self, call: ToolCall) -> ToolCall:
        # Policies number their calls per turn (call_0, ...): ids must be unique in the whole trajectory.
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id or call_id in self.ids:
            k = len(self.ids)
            while f"call_{k}" in self.ids:
                k += 1
            call_id = f"call_{k}"
        self.ids.add(call_id)
        return {"id": call_id, "type": "function", "function": call["function"]}

    def _step(self, call: ToolCall) -> Message:
        if self.call_timeout is None:
            return self.env.step(call)
        box: dict[str, Any] = {}

        def work() -> None:
            with self.lock:
                try:
                    box["message"] = self.env.step(call)
                except BaseException as e:  # carried to the caller: a step that raises is the env's bug
                    box["error"] = e

        # A daemon thread: an abandoned call cannot keep the process from exiting.
        worker = threading.Thread(target=work, name=f"step-{call['function']['name']}", daemon=True)
        worker.start()
        worker.join(self.call_timeout)
        if worker.is_alive():
            self.timeouts += 1
            return tool_error(call, "timeout", f"the call did not finish within {self.call_timeout:g} s; it was "
                              "abandoned")
        if "error" in box:
            raise box["error"]
        return box["message"]

    def _capped(self, message: Message) -> Message:
        content = message.get("content")
        if self.max_chars is None or not isinstance(content, str) or len(content) <= self.max_chars:
            return message
        cut = content[:self.max_chars]
        return {**message, "content": cut + TRUNCATED.format(n=len(content) - len(cut))}

    def trajectory(self) -> Trajectory:
        """The finished episode as a canonical trajectory (see the module docstring)."""
        reward = 0.0
        # An abandoned call may still be changing the state: wait for it (as long as a call may take), else 0.
        if self.lock.acquire(timeout=-1 if self.call_timeout is None else self.call_timeout):
            try:
                reward = float(self.env.reward())
            finally:
                self.lock.release()
        if not 0.0 <= reward <= 1.0:
            raise TrajtuneError(f"environment {self.env.name}: reward {reward} of task {self.task.get('id')} is "
                                "outside [0, 1]")
        meta: dict[str, Any] = {**(self.task.get("meta") or {}), "env": self.env.name, "task_id": self.task.get("id"),
                                "split": self.task.get("split"), "policy": self.policy.name, "reward": reward,
                                "turns": self.turns, "end": self.end, "seed": self.seed,
                                "format_errors": self.format_errors, "timeouts": self.timeouts}
        if self.unsolvable is not None:
            meta["unsolvable"] = self.unsolvable
        record = {"id": f"{self.env.name}/{self.task.get('id')}", "source": f"synth/{self.env.name}",
                  "tools": self.tools, "messages": self.messages, "meta": meta}
        try:
            return validate_record(record)
        except InvalidRecord as e:
            raise TrajtuneError(f"environment {self.env.name}, task {self.task.get('id')}: the episode is not a "
                                f"valid trajectory ({e}); the environment's messages break the canonical format") from None


def _act(episodes: list[_Episode]) -> None:
    """One turn of every episode: the episodes sharing a policy object are answered by one `act_batch`."""
    groups: dict[int, list[_Episode]] = {}
    for ep in episodes:
        groups.setdefault(id(ep.policy), []).append(ep)
    for group in groups.values():
        policy = group[0].policy
        if len(group) == 1:  # the oracle (bound per episode) lands here: its Unsolvable ends only its episode
            ep = group[0]
            try:
                replies = [policy.act(list(ep.messages), ep.tools)]
            except Unsolvable as e:
                ep.end, ep.unsolvable = "unsolvable", str(e) or type(e).__name__
                continue
        else:
            replies = policy.act_batch([(list(ep.messages), ep.tools) for ep in group])
            if len(replies) != len(group):
                raise TrajtuneError(f"policy {policy.name}: act_batch returned {len(replies)} replies for "
                                    f"{len(group)} conversations")
        for ep, reply in zip(group, replies):
            ep.observe(reply)


def rollout(env: Environment, policy: Policy, task: Task, seed: int = 0, max_turns: int = 20,
            call_timeout: float | None = 60.0, max_observation_chars: int | None = 16000) -> Trajectory:
    """One episode of `task` in `env` (which stays open) by `policy`; the trajectory (module docstring).

    Example: `rollout(make_env("sql"), make_policy("oracle"), task)["meta"]["reward"]` -> 1.0."""
    ep = _Episode(env, policy, task, seed, max_turns, call_timeout, max_observation_chars)
    while ep.end is None:
        _act([ep])
    return ep.trajectory()


def rollout_batch(env_factory: Callable[[], Environment], policy: Policy, tasks: list[Task], seed: int = 0,
                  batch_size: int = 16, max_turns: int = 20, call_timeout: float | None = 60.0,
                  max_observation_chars: int | None = 16000) -> list[Trajectory]:
    """The trajectories of `tasks`, in order: up to `batch_size` episodes live at once, each in its own
    environment from `env_factory()` (closed when the episode ends), all stepped one turn per policy call."""
    if batch_size < 1 or max_turns < 1:
        raise TrajtuneError(f"rollout_batch: batch_size ({batch_size}) and max_turns ({max_turns}) must be >= 1")
    out: list[Trajectory | None] = [None] * len(tasks)
    live: dict[int, _Episode] = {}
    nxt = 0
    try:
        while nxt < len(tasks) or live:
            while nxt < len(tasks) and len(live) < batch_size:
                env = env_factory()
                try:
                    live[nxt] = _Episode(env, policy, tasks[nxt], seed, max_turns, call_timeout,
                                         max_observation_chars)
                except BaseException:
                    env.close()
                    raise
                nxt += 1
            _act([ep for ep in live.values() if ep.end is None])
            for i in [i for i, ep in live.items() if ep.end is not None]:
                ep = live.pop(i)
                try:
                    out[i] = ep.trajectory()
                finally:
                    ep.env.close()
    finally:
        for ep in live.values():
            ep.env.close()
    return out  # type: ignore[return-value]  (every slot was filled)
