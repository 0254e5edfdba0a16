"""`trajtune env tasks` and `trajtune env run` through the real CLI: task listings without gold unless asked,
committing an AgentBench SELECT label by hand scores 1 and a wrong answer 0, a scripted multi-turn apis episode,
and usage errors as one-line messages."""

import json
import subprocess
import sys

from conftest import FIXTURES

from trajtune.launcher.cli import main

DEV = str(FIXTURES / "agentbench_db" / "dev.jsonl")


def lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def commit(*answers):
    return json.dumps({"name": "commit_final_answer", "arguments": {"answers": list(answers)}})


def test_committing_a_select_label_by_hand_scores_1_and_a_wrong_answer_0():
    # dev-0's reference query does not even run in SQLite: the label is the truth, and it is what scores.
    def run(answer: str) -> list[dict]:
        out = subprocess.run([sys.executable, "-m", "trajtune.launcher.cli", "env", "run", "--env", "sql", "--tasks",
                              DEV, "--task", "dev-0", "--call", commit(answer)],
                             capture_output=True, text=True, check=True).stdout
        return [json.loads(line) for line in out.splitlines()]

    right = run("March 19, 1998")
    assert right[0]["reset"][1]["content"].endswith("Termination of Mission listed as August 15, 2000?")
    assert json.loads(right[1]["observation"]["content"]) == {"committed": ["March 19, 1998"]}
    assert right[-1] == {"reward": 1.0, "done": True}
    assert run("March 19, 1999")[-1] == {"reward": 0.0, "done": True}


def test_env_run_prints_each_observation_then_the_reward(capsys):
    query = json.dumps({"name": "execute_sql", "arguments": {"query": "SELECT Floors FROM skyscrapers_in_Columbus "
                                                                      "WHERE Name = 'Capitol Square'"}})
    assert main(["env", "run", "--env", "sql", "--tasks", DEV, "--task", "dev-3", "--call", '{"name": "nope"}',
                 "--call", query, "--call", commit("26")]) == 0
    out = lines(capsys)
    assert out[0]["tools"] == ["execute_sql", "commit_final_answer"]
    assert [list(o) for o in out] == [["reset", "tools"], ["call", "observation"], ["call", "observation"],
                                      ["call", "observation"], ["reward", "done"]]
    assert json.loads(out[1]["observation"]["content"])["error"]["type"] == "unknown_tool"
    assert out[2]["observation"]["content"] == "[('26',)]" and out[-1]["reward"] == 1.0


def test_env_tasks_lists_ids_without_gold_unless_asked(capsys):
    assert main(["env", "tasks", "--env", "sql", "--tasks", DEV, "--split", "held_out"]) == 0
    out = lines(capsys)
    assert len(out) == 18 and {o["split"] for o in out} == {"held_out"}
    assert all(set(o) == {"id", "env", "split", "instruction", "meta"} for o in out)
    assert main(["env", "tasks", "--env", "apis", "--n", "3", "--seed", "2", "--with-gold"]) == 0
    out = lines(capsys)
    assert len(out) == 3 and all("turns" in o["gold"] for o in out) and out[0]["id"].startswith("gen2-")


def test_a_scripted_follow_up_episode_through_calls_file(tmp_path, capsys):
    assert main(["env", "tasks", "--env", "apis", "--with-gold"]) == 0
    task = next(t for t in lines(capsys) if t["meta"]["template"] == "time_follow_up")
    script = tmp_path / "episode.jsonl"
    steps = []
    for turn in task["gold"]["turns"]:
        steps.append(json.dumps(turn["calls"][0][0]))
        steps.append(json.dumps({"answer": f"It is {turn['facts'][0]} there."}))
    script.write_text("\n".join(steps) + "\n")
    assert main(["env", "run", "--env", "apis", "--task", task["id"], "--calls", str(script)]) == 0
    out = lines(capsys)
    assert out[2]["next"] == {"role": "user", "content": task["gold"]["turns"][1]["user"]}
    assert out[4]["next"] is None and out[-1] == {"reward": 1.0, "done": True}


def test_usage_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["env", "run", "--env", "sql", "--tasks", DEV, "--task", "dev-999", "--answer", "x"]) == 2
    assert "no task 'dev-999'" in capsys.readouterr().err
    bad = tmp_path / "calls.jsonl"
    bad.write_text(commit("1") + "\n{oops\n")
    assert main(["env", "run", "--env", "sql", "--tasks", DEV, "--task", "dev-3", "--calls", str(bad)]) == 2
    assert f"{bad}:2: " in capsys.readouterr().err
    assert main(["env", "tasks", "--env", "nosuch"]) == 2
    assert "unknown environment 'nosuch'" in capsys.readouterr().err
