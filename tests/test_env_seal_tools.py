"""The seal_tools environment on the Seal-Tools fixtures: the oracle solves every task but the 8 whose gold breaks
the tool's own schema, wrong / missing / extra calls score 0, results are deterministic and typed as declared, and
no held-out tool is ever offered on a held-in task."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
from conftest import run_oracle

from trajtune.data_builders.envs import Unsolvable, make_env
from trajtune.data_builders.envs.seal_tools import match_calls, simulate
from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.trajectory import validate_record

# Gold arguments that break the tool's declared parameter types (Seal-Tools' own data): a string for a number,
# a list for a number, or an earlier call's string output as an integer id.
UNSOLVABLE = {"dev-difficult-215", "dev-difficult-300", "dev-difficult-302", "dev-difficult-325", "dev-difficult-334",
              "dev-difficult-547", "dev-difficult-664", "dev-difficult-676"}


@pytest.fixture(scope="module")
def env(fixtures_dir):
    return make_env("seal_tools", tasks_file=str(fixtures_dir / "seal_tools"))


def call(name: str, arguments: dict, i: int = 0) -> dict:
    return {"id": f"t{i}", "type": "function", "function": {"name": name, "arguments": arguments}}


def task_by_id(env, task_id: str) -> dict:
    return next(t for t in env.tasks() if t["id"] == task_id)


def test_oracle_solves_every_fixture_task_it_can(env):
    tasks = env.tasks()
    assert len(tasks) == 900
    unsolvable = {}
    for task in tasks:
        try:
            messages = run_oracle(env, task)
        except Unsolvable as e:
            unsolvable[task["id"]] = str(e)
            continue
        assert env.reward() == 1.0, task["id"]
        if task["id"] in ("dev-difficult-200", "test_out_domain-easy-0"):
            validate_record({"id": task["id"], "tools": env.tools(), "messages": messages})
    assert set(unsolvable) == UNSOLVABLE
    assert all("breaks the tool's own schema" in why for why in unsolvable.values())


def test_nested_calls_take_the_earlier_result_or_the_label(env):
    task = task_by_id(env, "dev-difficult-200")  # getAvailableResources(location = searchCrop's crop_info)
    messages = run_oracle(env, task)
    crop_info = json.loads(next(m for m in messages if m.get("name") == "searchCrop")["content"])["crop_info"]
    nested = next(c for m in messages for c in m.get("tool_calls") or [] if c["function"]["name"] ==
                  "getAvailableResources")
    assert nested["function"]["arguments"]["location"] == crop_info  # filled from the result, as an agent would
    assert env.reward() == 1.0
    # Seal-Tools' own convention, the label as the value, is accepted too; a wrong value is not.
    for location, reward in [("API_call_1", 1.0), ("somewhere else", 0.0), ("API_call_0", 0.0)]:
        env.reset(task)
        for i, g in enumerate(task["gold"]["calls"]):
            args = {k: v for k, v in g["arguments"].items()}
            if g["name"] == "getAvailableResources":
                args["location"] = location
            env.step(call(g["name"], args, i))
        assert env.reward() == reward, location


def test_wrong_missing_and_extra_calls_score_zero(env):
    task = task_by_id(env, "test_out_domain-easy-0")  # getFilmDetails(title="Pulp Fiction")
    gold = task["gold"]["calls"][0]
    distractor = next(n for n in task["meta"]["tools"] if n != gold["name"])
    cases = [
        ([call(gold["name"], gold["arguments"])], 1.0),
        ([call(gold["name"], {"title": "Inception"})], 0.0),  # wrong argument
        ([call(gold["name"], {**gold["arguments"], "year": 1994})], 0.0),  # not a parameter: refused, nothing made
        ([], 0.0),  # missing
        ([call(gold["name"], gold["arguments"]), call(gold["name"], gold["arguments"], 1)], 0.0),  # extra
        ([call(distractor, {})], 0.0),  # wrong tool
        ([call("notOffered", {})], 0.0),
    ]
    for calls, reward in cases:
        env.reset(task)
        for c in calls:
            env.step(c)
        assert env.reward() == reward, calls


def test_bad_calls_are_error_observations(env):
    env.reset(task_by_id(env, "test_in_domain-easy-1"))  # calculateNetIncome(revenue: number, expenses: number)
    for c, kind in [(call("nope", {}), "unknown_tool"),
                    (call("calculateNetIncome", {"revenue": "a lot"}), "bad_arguments"),
                    (call("calculateNetIncome", {"revenue": 1, "expenses": 2, "tax": 3}), "bad_arguments"),
                    (call("calculateNetIncome", "{oops"), "bad_arguments")]:
        assert json.loads(env.step(c)["content"])["error"]["type"] == kind
    assert env.made == []
    # Seal-Tools writes numbers as strings ("40.7"); the number itself matches.
    env.step(call("calculateNetIncome", {"revenue": 0.2907590418481535, "expenses": 40.7}))
    assert env.reward() == 1.0


def test_results_are_deterministic_and_typed_as_declared(env, fixtures_dir):
    other = make_env("seal_tools", tasks_file=str(fixtures_dir / "seal_tools"))
    assert json.dumps(other.tasks()) == json.dumps(env.tasks())
    py_types = {"str": str, "int": int, "float": float, "bool": bool}
    for task in env.tasks()[::50]:
        for g in task["gold"]["calls"]:
            spec = env.catalog[g["name"]]
            result = simulate(spec, g["arguments"])
            assert result == simulate(copy.deepcopy(spec), dict(reversed(list(g["arguments"].items()))))
            assert list(result) == list(spec["responses"])
            for field, value in result.items():
                assert type(value) is py_types[spec["responses"][field]["type"]], (g["name"], field, value)
    env.reset(env.tasks()[0])
    assert [t["function"]["name"] for t in env.tools()] == env.tasks()[0]["meta"]["tools"]


def test_splits_are_by_domain_and_share_no_tool(env):
    held_in, held_out = env.tasks(split="held_in"), env.tasks(split="held_out")
    assert len(held_out) == 106 and len(held_in) == 794  # 100 out-of-domain + 6 dev tasks calling their tools
    assert all(t["id"].startswith("test_out_domain") or "split_reason" in t["meta"] for t in held_out)
    assert not any(t["id"].startswith("test_out_domain") for t in held_in)
    out_of_domain = {g["name"] for t in held_out if t["id"].startswith("test_out_domain") for g in t["gold"]["calls"]}
    offered_in = {name for t in held_in for name in t["meta"]["tools"]}
    assert out_of_domain.isdisjoint(offered_in)  # not even as a distractor
    assert all(out_of_domain.intersection(g["name"] for g in t["gold"]["calls"]) for t in held_out)
    assert all(set(g["name"] for g in t["gold"]["calls"]) < set(t["meta"]["tools"]) for t in env.tasks())


def test_match_calls_names_the_error():
    catalog = {"f": {"api_name": "f", "parameters": {"x": {"type": "int"}}, "required": ["x"],
                     "responses": {"y": {"type": "str"}}}}
    gold = [{"name": "f", "arguments": {"x": "3"}, "outputs": ["API_call_0"]}]
    assert match_calls([{"name": "f", "arguments": {"x": 3}, "result": {"y": "a"}}], gold, catalog) == (True, None)
    assert match_calls([{"name": "f", "arguments": {"x": 4}, "result": {}}], gold, catalog) == (
        False, "seal_tools:missing_call:f")
    made = [{"name": "f", "arguments": {"x": 3}, "result": {}}] * 2
    assert match_calls(made, gold, catalog) == (False, "seal_tools:extra_call:f")


def test_bad_tasks_files_are_refused_with_file_and_line(fixtures_dir, tmp_path):
    with pytest.raises(TrajtuneError, match="seal_tools needs --tasks"):
        make_env("seal_tools")
    data = tmp_path / "dev.jsonl"
    shutil.copy(fixtures_dir / "seal_tools" / "test_in_domain.head100.jsonl", data)
    with pytest.raises(TrajtuneError, match="no tool.jsonl beside it"):
        make_env("seal_tools", tasks_file=str(data))
    shutil.copy(fixtures_dir / "seal_tools" / "tool.jsonl", tmp_path / "tool.jsonl")
    assert len(make_env("seal_tools", tasks_file=str(data)).tasks(split="held_in")) == 100
    with open(data, "a") as f:
        f.write('{"id": "x", "query": "q", "calling": [{"api": "noSuchApi", "parameters": {}}]}\n{"id": 1}\n')
    with pytest.raises(TrajtuneError, match=rf"{data}:101: calls noSuchApi, which tool.jsonl does not define"):
        make_env("seal_tools", tasks_file=str(data)).tasks()
