"""The shell environment: generated tasks, the oracle solves every one from command outputs, wrong answers and
untouched directories score 0, runs are deterministic, held-in and held-out share no task family."""

from __future__ import annotations

import json

import pytest
from conftest import run_oracle

from trajtune.data_builders.envs import make_env
from trajtune.data_builders.envs.sandbox import check
from trajtune.data_builders.envs.shell import answer_matches, final_answer
from trajtune.data_builders.envs.shell_tasks import FAMILIES
from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.trajectory import validate_record

REASON = check()
needs_sandbox = pytest.mark.skipif(REASON is not None, reason=f"sandbox unavailable: {REASON}")


@pytest.fixture(scope="module")
def env():
    env = make_env("shell", per_family=3)
    yield env
    env.close()


def bash(env, command: str) -> str:
    return env.step({"id": "c", "type": "function", "function": {"name": "bash", "arguments": {"command": command}}})[
        "content"]


@needs_sandbox
@pytest.mark.parametrize("seed", [0, 1])
def test_oracle_solves_every_generated_task_from_command_outputs(env, seed):
    tasks = env.tasks(seed=seed)
    assert len(tasks) == 3 * len(FAMILIES)
    for task in tasks:
        messages = run_oracle(env, task)
        assert env.reward() == 1.0, (task["id"], messages[2:])
        # Its trajectory is a valid canonical record (what synthesis writes).
        validate_record({"id": task["id"], "tools": env.tools(), "messages": messages, "meta": task["meta"]})


@needs_sandbox
def test_wrong_answers_and_untouched_directories_score_zero(env):
    for task in env.tasks():
        env.reset(task)
        if "answer" in task["gold"]:
            gold = task["gold"]["answer"]
            wrong = str(int(gold) + 1) if task["gold"]["match"] == "int" else "notes/none.txt"
            env.respond({"role": "assistant", "content": f"I think so.\nAnswer: {wrong}"})
        else:
            bash(env, "ls")  # looks, changes nothing
            env.respond({"role": "assistant", "content": "Answer: done"})
        assert env.reward() == 0.0, task["id"]


@needs_sandbox
def test_a_half_done_edit_scores_zero(env):
    task = next(t for t in env.tasks() if t["meta"]["family"] == "rename_ext")
    env.reset(task)
    bash(env, 'f=$(ls docs/*.txt | head -n 1); mv -- "$f" "${f%.txt}.md"')  # one of several
    assert env.reward() == 0.0
    bash(env, 'for f in docs/*.txt; do mv -- "$f" "${f%.txt}.md"; done')
    assert env.reward() == 1.0


@needs_sandbox
def test_a_script_task_runs_the_agents_script_on_files_it_has_not_seen(env):
    task = next(t for t in env.tasks() if t["meta"]["family"] == "write_script")
    env.reset(task)
    n = len((env.workdir / "data.txt").read_text().splitlines())
    bash(env, f"printf '#!/bin/sh\\necho {n}\\n' > count_lines.sh && chmod +x count_lines.sh")  # right on data.txt only
    assert bash(env, "./count_lines.sh data.txt") == f"{n}\n"
    assert env.reward() == 0.0
    bash(env, "printf '#!/bin/sh\\nwc -l < \"$1\"\\n' > count_lines.sh")
    assert env.reward() == 1.0


@needs_sandbox
def test_same_task_same_observations(env):
    task = env.tasks()[0]
    seen = []
    for _ in range(2):
        env.reset(task)
        commands = ("ls -lR --time-style=full-iso", "head -n 3 logs/app.log", "wc -c logs/app.log")
        seen.append([bash(env, c) for c in commands])
    assert seen[0] == seen[1]


@needs_sandbox
def test_bad_calls_are_error_observations(env):
    env.reset(env.tasks()[0])
    for call, kind in [({"name": "python", "arguments": {"code": "1"}}, "unknown_tool"),
                       ({"name": "bash", "arguments": {"cmd": "ls"}}, "bad_arguments"),
                       ({"name": "bash", "arguments": "{not json"}, "bad_arguments")]:
        message = env.step({"id": "x", "type": "function", "function": call})
        assert json.loads(message["content"])["error"]["type"] == kind
    assert bash(env, "false") == "[exit code 1]"
    assert bash(env, "echo hi; exit 3") == "hi\n[exit code 3]"
    assert bash(env, "true") == "(no output)"
    as_string = {"name": "bash", "arguments": '{"command": "echo hi"}'}  # arguments serialized, as some APIs send
    assert env.step({"id": "y", "type": "function", "function": as_string})["content"] == "hi\n"


def test_tasks_are_deterministic_and_splits_share_no_family():
    a, b = make_env("shell", per_family=4), make_env("shell", per_family=4)
    assert json.dumps(a.tasks(seed=3)) == json.dumps(b.tasks(seed=3))
    assert json.dumps(a.tasks(seed=3)) != json.dumps(a.tasks(seed=4))
    held_in, held_out = a.tasks(split="held_in"), a.tasks(split="held_out")
    assert held_in and held_out and len(held_in) + len(held_out) == len(a.tasks())
    fam_in = {t["meta"]["family"] for t in held_in}
    fam_out = {t["meta"]["family"] for t in held_out}
    assert fam_in.isdisjoint(fam_out) and fam_in | fam_out == set(FAMILIES)
    assert len({t["id"] for t in a.tasks()}) == len(a.tasks())
    assert [t["id"] for t in a.tasks(n=len(FAMILIES))] == [t["id"] for t in a.tasks()[: len(FAMILIES)]]
    assert {t["meta"]["family"] for t in a.tasks(n=len(FAMILIES))} == set(FAMILIES)  # the first n cover all


def test_tasks_file_round_trips_and_bad_lines_name_file_and_line(tmp_path):
    env = make_env("shell", per_family=2)
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in env.tasks()))
    assert make_env("shell", tasks_file=str(path)).tasks() == env.tasks()
    with open(path, "a") as f:
        f.write('{"id": "x", "meta": {"family": "nope", "gen": "0-0"}}\n')
    with pytest.raises(TrajtuneError, match=rf"{path}:{len(env.tasks()) + 1}: not a shell task.*meta.family"):
        make_env("shell", tasks_file=str(path)).tasks()
    with pytest.raises(TrajtuneError, match="unknown option.*wall_sec"):
        make_env("shell", wall_sec=3)


def test_final_answer_and_matching():
    assert final_answer("Counting...\nAnswer: 17\n") == "17"
    assert final_answer("**Answer:** `notes/a.txt`.") == "`notes/a.txt`."
    assert final_answer("There are 12 of them.") == "There are 12 of them."
    assert answer_matches("12", {"answer": "12", "match": "int"})
    assert answer_matches("There are 1,204 of them.", {"answer": "1204", "match": "int"})
    assert not answer_matches("13", {"answer": "12", "match": "int"})
    assert answer_matches("`./notes/a.txt`.", {"answer": "notes/a.txt", "match": "path"})
    assert answer_matches("/workspace/notes/a.txt", {"answer": "notes/a.txt", "match": "path"})
    assert not answer_matches("notes/b.txt", {"answer": "notes/a.txt", "match": "path"})
