"""The `apis` environment: schemas equal the functions', the oracle solves every generated task (single, parallel,
sequential, follow-up, unservable), baselines score ~0, held-out tools never appear held-in, the reward checks calls
and stated values, and bad calls come back as error observations."""

import json
import random

import pytest

from trajtune.data_builders.envs import make_env
from trajtune.data_builders.envs.apis import check_episode, states
from trajtune.data_builders.envs.apis_tools import SCHEMAS, STATELESS, World
from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.tools import ToolRegistry, function_to_tool
from trajtune.data_builders.trajectory import validate_record


def call(name, /, id="c", **arguments):
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def episode(env, task, policy):
    """The rollout loop of envs/base.py; returns the messages and the reward."""
    messages = env.reset(task)
    for _ in range(12):
        reply = policy(messages)
        messages.append(reply)
        for c in reply.get("tool_calls") or []:
            messages.append(env.step(c))
        if not reply.get("tool_calls"):
            nxt = env.respond(reply)
            if nxt is None:
                break
            messages.append(nxt)
    return messages, env.reward()


@pytest.fixture(scope="module")
def env():
    return make_env("apis")


@pytest.fixture(scope="module")
def tasks(env):
    return env.tasks(seed=0)


def test_schemas_are_what_function_to_tool_reads_from_the_functions():
    world = World()
    for name, schema in SCHEMAS.items():
        assert function_to_tool(STATELESS.get(name) or getattr(world, name)) == schema, name
    demo = {t["function"]["name"]: t for t in ToolRegistry.demo().tools}
    assert SCHEMAS["get_weather"] == demo["get_weather"] and SCHEMAS["get_time"] == demo["get_time"]


def test_oracle_solves_every_generated_task_with_valid_trajectories(env):
    kinds = set()
    for seed in (0, 1):
        for task in env.tasks(seed=seed):
            messages, reward = episode(env, task, env.oracle_act)
            assert reward == 1.0, (task["id"], env.reason)
            validate_record({"id": task["id"], "tools": env.tools(), "messages": messages})
            kinds.add(task["meta"]["kind"])
            if task["meta"]["kind"] == "parallel":  # several calls in one assistant message
                assert len(messages[2]["tool_calls"]) >= 2
            if task["meta"]["kind"] == "follow_up":
                assert [m["role"] for m in messages].count("user") == 2
            if task["meta"]["kind"] == "unservable":
                assert not any(m.get("tool_calls") for m in messages) and "Sorry" in messages[-1]["content"]
    assert kinds == {"single", "parallel", "sequential", "follow_up", "unservable"}


def test_do_nothing_and_random_baselines_score_near_zero(env, tasks):
    rng = random.Random(0)

    def do_nothing(messages):
        return {"role": "assistant", "content": "I don't know."}

    def random_caller(messages):  # one call of a random tool with made-up arguments, then a reply
        if messages[-1]["role"] == "tool":
            return {"role": "assistant", "content": "Here you go: " + messages[-1]["content"]}
        tool = rng.choice(env.tools())["function"]
        args = {p: (rng.randint(1, 100) if s["type"] == "number" else rng.choice(["Paris", "km", "USD", "notes"]))
                for p, s in tool["parameters"]["properties"].items()}
        return {"role": "assistant", "content": None, "tool_calls": [call(tool["name"], **args)]}

    unservable = sum(t["meta"]["kind"] == "unservable" for t in tasks)
    assert sum(episode(env, t, do_nothing)[1] for t in tasks) == unservable  # declining is right only there
    assert unservable / len(tasks) < 0.12
    assert sum(episode(env, t, random_caller)[1] for t in tasks) / len(tasks) < 0.05


def test_held_out_tasks_offer_and_need_only_tools_never_seen_held_in(env, tasks):
    def used(split):
        return {c["name"] for t in env.tasks(split=split) for turn in t["gold"]["turns"] for s in turn["calls"]
                for c in s}

    def offered(split):
        env.reset(env.tasks(split=split)[0])
        return {t["function"]["name"] for t in env.tools()}

    assert not used("held_in") & used("held_out") and not offered("held_in") & offered("held_out")
    assert used("held_out") == offered("held_out") and {"get_weather", "get_time"} <= used("held_in")
    assert {d for t in env.tasks(split="held_out") for d in t["meta"]["domains"]} == {"currency", "calendar", "files"}
    assert env.tasks(seed=5) == env.tasks(seed=5) and env.tasks(seed=5) != env.tasks(seed=6)
    assert len({t["id"] for t in tasks}) == len(tasks) > 80
    with pytest.raises(TrajtuneError, match="unknown split"):
        env.tasks(split="train")


def test_reward_checks_calls_in_any_order_within_a_step_and_the_stated_values(env, tasks):
    task = next(t for t in tasks if t["meta"]["template"] == "weather_parallel")
    gold_calls = task["gold"]["turns"][0]["calls"][0]

    def play(calls, answer):
        env.reset(task)
        outs = [json.loads(env.step(call(c["name"], id=f"c{i}", **c["arguments"]))["content"])
                for i, c in enumerate(calls)]
        env.respond({"role": "assistant", "content": answer(outs)})
        return env.reward()

    def full(outs):
        return " ".join(f"{o['city']}: {o['temperature_c']} C, {o['conditions']}." for o in outs)

    assert play(gold_calls[::-1], full) == 1.0  # parallel calls, any order
    assert play(gold_calls, lambda outs: full(outs[:2])) == 0.0 and "does not state" in env.reason
    assert play(gold_calls[:2], full) == 0.0  # a call missing
    assert play(gold_calls + [gold_calls[0]], full) == 0.0  # one too many
    wrong = [dict(gold_calls[0], arguments={"city": "Atlantis"})] + gold_calls[1:]
    assert play(wrong, full) == 0.0 and "matches no expected call" in env.reason
    env.reset(task)  # a failed call, then the right ones: recovered
    env.step(call("get_weather", id="bad", town="Paris"))
    outs = [json.loads(env.step(call(c["name"], id=f"c{i}", **c["arguments"]))["content"])
            for i, c in enumerate(gold_calls)]
    env.respond({"role": "assistant", "content": full(outs)})
    assert env.reward() == 1.0


def test_reward_pieces():
    assert states("It is -3 °C and Light Rain", "-3") and states("It is -3 °C and Light Rain", "light rain")
    assert not states("It is 13 °C", "3") and states("1,234.5 km", "1234.5") and states("92 EUR", "92.0")
    gold = {"unservable": True, "turns": [{"user": "Order pizza", "calls": [], "facts": []}]}
    assert check_episode(gold, [[]], ["Sorry, I can't."], 0) == (True, "ok")
    assert check_episode(gold, [[]], ["Sorry."], 1)[0] is False  # even a failed call is a call
    assert check_episode(gold, [[]], [""], 0)[0] is False
    gold = {"unservable": False, "turns": [{"user": "Text 7 km in miles to Bob", "calls": [
        [{"name": "convert_units", "arguments": {"value": 7, "from_unit": "km", "to_unit": "mi"}}],
        [{"name": "send_message", "arguments": {"to": "+1"}, "mentions": {"text": ["4.35"]}}]], "facts": []}]}
    made = [{"name": "convert_units", "arguments": {"value": 7.0, "from_unit": "kilometres", "to_unit": "miles"}},
            {"name": "send_message", "arguments": {"to": "+1", "text": "7 km is 4.35 mi"}}]
    assert check_episode(gold, [made], ["Sent."], 2) == (True, "ok")
    made[1]["arguments"]["text"] = "about four miles"
    assert check_episode(gold, [made], ["Sent."], 2)[0] is False


def test_follow_up_turns_and_their_answers_are_checked(env, tasks):
    task = next(t for t in tasks if t["meta"]["template"] == "weather_follow_up")
    turns = task["gold"]["turns"]
    env.reset(task)
    first = json.loads(env.step(call("get_weather", **turns[0]["calls"][0][0]["arguments"]))["content"])
    nxt = env.respond({"role": "assistant", "content": f"{first['temperature_c']} °C, {first['conditions']}"})
    assert nxt == {"role": "user", "content": turns[1]["user"]} and not env.done
    nxt = env.respond({"role": "assistant", "content": "No idea."})  # turn 2 answered without a call
    assert nxt is None and env.done and env.reward() == 0.0 and env.reason.startswith("turn 2:")


def test_bad_calls_return_error_observations_and_the_next_call_works(env, tasks):
    task = next(t for t in tasks if t["meta"]["template"] == "time")
    env.reset(task)

    def error_type(c):
        return json.loads(env.step(c)["content"])["error"]["type"]

    assert error_type(call("launch_rocket")) == "unknown_tool"
    assert error_type(call("get_time", location=3)) == "bad_arguments"
    assert error_type(call("get_time", location="Paris", tz="x")) == "bad_arguments"
    assert error_type({"id": "s", "type": "function", "function": {"name": "get_time", "arguments": "{bad"}}) \
        == "bad_arguments"
    assert error_type(call("get_time", location="Atlantis")) == "tool_error"  # the backend's own failure
    assert error_type({"id": "n", "function": {}}) == "bad_call"
    args = task["gold"]["turns"][0]["calls"][0][0]["arguments"]
    good = json.loads(env.step({"id": "j", "type": "function",
                                "function": {"name": "get_time", "arguments": json.dumps(args)}})["content"])
    assert good["local_time"][11:16] == task["gold"]["turns"][0]["facts"][0]
    env.respond({"role": "assistant", "content": f"It is {good['local_time'][11:16]}."})
    assert env.reward() == 1.0, env.reason


def test_state_is_fresh_per_episode_and_deterministic(env, tasks):
    task = next(t for t in tasks if t["meta"]["template"] == "add_event")
    args = task["gold"]["turns"][0]["calls"][0][0]["arguments"]
    runs = []
    for _ in range(2):
        env.reset(task, seed=0)
        runs.append([env.step(call("add_event", **args)), env.step(call("list_events", date=args["date"]))])
    assert runs[0] == runs[1] and '"evt_1"' in runs[1][0]["content"]  # not evt_2: the calendar starts fresh
    assert args["title"] in runs[0][1]["content"]


def test_task_records_file_round_trips(env, tasks, tmp_path):
    path = tmp_path / "apis.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks[:5]))
    assert make_env("apis", tasks_file=str(path)).tasks() == tasks[:5]
    path.write_text(json.dumps({"id": "x"}) + "\n")
    with pytest.raises(TrajtuneError, match=r"apis.jsonl:1: not an apis task record"):
        make_env("apis", tasks_file=str(path)).tasks()
