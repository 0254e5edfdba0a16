"""The rollout loop on a toy environment: oracle solves, random fails, turn limits, bad calls, timeouts, caps.

`LookupEnv` is a tiny world written here (the real environments are built elsewhere): a table of facts, a
`lookup(key)` tool, follow-up questions, a `slow` tool that blocks until released, a `dump` tool with a huge
answer. Its oracle solves a task from what `lookup` returns, never from the gold.
"""

from __future__ import annotations

import json
import re
import threading

import pytest

from trajtune.data_builders.agents import PARSE_ERROR, Policy, make_policy, rollout, rollout_batch
from trajtune.data_builders.agents.rollout import TRUNCATED
from trajtune.data_builders.envs import Environment, Unsolvable, tool_error, tool_message
from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.trajectory import InvalidRecord, check_arguments, validate_record

FACTS = {f"k{i}": f"v{(i * 7) % 13}" for i in range(20)}


def _fn(name: str, props: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": f"The {name} tool.", "parameters": {
        "type": "object", "properties": props, "required": required}}}


TOOLS = [_fn("lookup", {"key": {"type": "string"}}, ["key"]), _fn("slow", {}, []), _fn("dump", {}, [])]


class LookupEnv(Environment):
    """Tasks ask for the value of one key, some with a follow-up key; reward 1 when every answer holds its value."""

    name = "lookup"
    release = threading.Event()  # `slow` blocks while a test holds this cleared
    release.set()

    def tasks(self, split=None, n=None, seed=0):
        out = []
        for i in range(10):
            keys = [f"k{i}"] + ([f"k{i + 10}"] if i % 3 == 0 else [])
            out.append({"id": f"t{i}", "env": self.name, "split": "held_in" if i < 7 else "held_out",
                        "instruction": f"What is the value of {keys[0]}?", "gold": [FACTS[k] for k in keys],
                        "meta": {"follow_ups": keys[1:]}})
        out.append({"id": "t_missing", "env": self.name, "split": "held_in", "instruction": "What is the value of "
                    "k99?", "gold": ["v0"], "meta": {"follow_ups": []}})
        out = [t for t in out if split is None or t["split"] == split]
        return out[:n]

    def tools(self):
        return TOOLS

    def reset(self, task, seed=0):
        self.task, self.done, self.answers = task, False, []
        self.pending = list(task["meta"]["follow_ups"])
        return [{"role": "system", "content": "Answer with the value you looked up."},
                {"role": "user", "content": task["instruction"]}]

    def step(self, call):
        name, args = call["function"]["name"], call["function"]["arguments"]
        spec = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
        if name not in spec:
            return tool_error(call, "unknown_tool", f"no tool {name!r}")
        try:
            check_arguments(args, spec[name], name)
        except InvalidRecord as e:
            return tool_error(call, "bad_arguments", e.detail)
        if name == "slow":
            self.release.wait(10)  # bounded: a rollout that ignored its timeout fails, not hangs
            return tool_message(call, "{}")
        if name == "dump":
            return tool_message(call, "x" * 50_000)
        if args["key"] not in FACTS:
            return tool_error(call, "unknown_key", f"no fact {args['key']!r}")
        return tool_message(call, json.dumps({"key": args["key"], "value": FACTS[args["key"]]}))

    def respond(self, reply):
        self.answers.append(reply.get("content") or "")
        if self.pending:
            return {"role": "user", "content": f"And {self.pending.pop(0)}?"}
        self.done = True
        return None

    def reward(self):
        gold = self.task["gold"]
        return float(len(self.answers) == len(gold) and all(g in a for g, a in zip(gold, self.answers)))

    def oracle_act(self, messages):
        last = messages[-1]
        if last["role"] == "tool":
            result = json.loads(last["content"])
            if "error" in result:
                raise Unsolvable(f"lookup failed: {result['error']['message']}")
            return {"role": "assistant", "content": f"The value is {result['value']}."}
        key = re.findall(r"k\d+", last["content"])[-1]
        return {"role": "assistant", "content": f"I will look up {key}.", "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "lookup", "arguments": {"key": key}}}]}


def call(name: str, **args) -> dict:
    return {"id": "call_0", "type": "function", "function": {"name": name, "arguments": args}}


class Scripted(Policy):
    """Replies from a list, in order (one episode at a time)."""

    name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)

    def act(self, messages, tools):
        return self.replies.pop(0)


@pytest.fixture(scope="module")
def tasks():
    return LookupEnv().tasks()


def test_oracle_solves_every_solvable_task_with_valid_trajectories(tasks):
    out = rollout_batch(LookupEnv, make_policy("oracle"), tasks, batch_size=4)
    assert [t["meta"]["task_id"] for t in out] == [t["id"] for t in tasks]  # task order, whatever finished first
    solvable = out[:-1]
    assert [t["meta"]["reward"] for t in solvable] == [1.0] * 10
    for traj, task in zip(out, tasks):
        assert validate_record(traj) == traj
        assert traj["tools"] == TOOLS and traj["meta"]["env"] == "lookup" and traj["meta"]["policy"] == "oracle"
        assert traj["meta"]["split"] == task["split"] and traj["meta"]["follow_ups"] == task["meta"]["follow_ups"]
    # A task with a follow-up: call, answer, follow-up question, call, answer; call ids unique across turns.
    t0 = out[0]
    assert [m["role"] for m in t0["messages"]] == ["system", "user", "assistant", "tool", "assistant", "user",
                                                  "assistant", "tool", "assistant"]
    assert t0["meta"]["turns"] == 4 and t0["meta"]["end"] == "done"
    ids = [c["id"] for m in t0["messages"] for c in m.get("tool_calls") or []]
    assert ids == ["call_0", "call_1"]
    assert [m["tool_call_id"] for m in t0["messages"] if m["role"] == "tool"] == ids
    # The oracle could not solve k99 from what lookup returned: counted, not faked.
    missing = out[-1]["meta"]
    assert (missing["end"], missing["reward"]) == ("unsolvable", 0.0) and "k99" in missing["unsolvable"]


def test_random_policy_scores_low_and_is_reproducible(tasks):
    first = rollout_batch(LookupEnv, make_policy("random", seed=3), tasks, batch_size=3, max_turns=4)
    again = [rollout(LookupEnv(), make_policy("random", seed=3), t, max_turns=4, call_timeout=None) for t in tasks]
    assert first == again  # a pure function of (seed, conversation): batching and order change nothing
    assert sum(t["meta"]["reward"] for t in first) / len(first) <= 0.1
    calls = [c["function"] for t in first for m in t["messages"] for c in m.get("tool_calls") or []]
    assert calls and all(set(c["arguments"]) >= {"key"} for c in calls if c["name"] == "lookup")
    assert all(validate_record(t) for t in first)
    other = rollout_batch(LookupEnv, make_policy("random", seed=4), tasks, max_turns=4)
    assert other != first


def test_max_turns_ends_the_episode(tasks):
    policy = Scripted([{"role": "assistant", "content": None, "tool_calls": [call("lookup", key="k1")]}] * 5)
    traj = rollout(LookupEnv(), policy, tasks[1], max_turns=3)
    assert traj["meta"]["end"] == "max_turns" and traj["meta"]["turns"] == 3 and traj["meta"]["reward"] == 0.0
    assert sum(m["role"] == "assistant" for m in traj["messages"]) == 3 and len(policy.replies) == 2


def test_bad_calls_get_error_observations_then_the_agent_recovers(tasks):
    task = tasks[1]  # k1 -> v7
    policy = Scripted([
        {"role": "assistant", "content": '<tool_call>\n{"name": "lookup", "arguments": {"key": "k1"\n</tool_call>',
         PARSE_ERROR: {"type": "truncated_json", "message": "the JSON body ends early"}},
        {"role": "assistant", "content": None, "tool_calls": [call("lokup", key="k1")]},
        {"role": "assistant", "content": None, "tool_calls": [call("lookup", key=1)]},
        {"role": "assistant", "content": None, "tool_calls": [call("lookup", key="k1")]},
        {"role": "assistant", "content": "The value is v7."}])
    traj = rollout(LookupEnv(), policy, task)
    msgs = traj["messages"][2:]
    assert [m["role"] for m in msgs] == ["assistant", "user"] * 3 + ["assistant", "tool", "assistant"]
    errors = [json.loads(m["content"])["error"] for m in msgs if m["role"] == "user"]
    assert [e["type"] for e in errors] == ["truncated_json", "unknown_tool", "bad_arguments"]
    assert "lokup" in errors[1]["message"] and "lookup" in errors[1]["message"]  # names what exists
    assert "lokup" in msgs[2]["content"] and "tool_calls" not in msgs[2]  # the bad call kept as the agent's text
    assert traj["meta"]["reward"] == 1.0 and traj["meta"]["format_errors"] == 3 and traj["meta"]["turns"] == 5
    assert all(PARSE_ERROR not in m for m in traj["messages"])
    assert validate_record(traj) == traj


def test_a_call_past_the_timeout_is_an_error_observation(tasks):
    LookupEnv.release.clear()
    policy = Scripted([{"role": "assistant", "content": None, "tool_calls": [call("slow")]},
                       {"role": "assistant", "content": "I could not find it."}])
    try:
        traj = rollout(LookupEnv(), policy, tasks[1], call_timeout=0.05)
    finally:
        LookupEnv.release.set()  # let the abandoned call finish
    tool = next(m for m in traj["messages"] if m["role"] == "tool")
    assert json.loads(tool["content"])["error"]["type"] == "timeout"
    assert traj["meta"]["timeouts"] == 1 and traj["meta"]["end"] == "done"


def test_long_tool_output_is_capped_with_a_marker(tasks):
    policy = Scripted([{"role": "assistant", "content": None, "tool_calls": [call("dump")]},
                       {"role": "assistant", "content": "Done."}])
    traj = rollout(LookupEnv(), policy, tasks[1], max_observation_chars=1000)
    tool = next(m for m in traj["messages"] if m["role"] == "tool")
    assert tool["content"] == "x" * 1000 + TRUNCATED.format(n=49_000)


def test_policy_factory_errors_name_the_choices():
    with pytest.raises(TrajtuneError, match="unknown policy 'gpt'.*oracle.*random.*openai:.*hf:"):
        make_policy("gpt")
    with pytest.raises(TrajtuneError, match="unknown option.*temprature.*seed"):
        make_policy("random", temprature=1)
    with pytest.raises(TrajtuneError, match="oracle policy has no environment"):
        make_policy("oracle").act([{"role": "user", "content": "hi"}], TOOLS)
    with pytest.raises(TrajtuneError, match="not a model directory"):
        make_policy("hf:/nonexistent/model")
