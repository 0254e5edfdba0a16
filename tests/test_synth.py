"""`trajtune synth` through the real CLI, on a toy arithmetic world (tests/synth_toy_env.py) with the oracle policy:
rewards, the books (every task in the output or the rejects), validation and `trajtune build` of the output, resume,
shards + merge, workers, errors retried, settings refused."""

from __future__ import annotations

import http.server
import json
import re
import threading
from pathlib import Path

import pytest
from conftest import TEMPLATES

from trajtune.data_builders.synth import paraphrase
from trajtune.data_builders.trajectory import read_trajectories
from trajtune.launcher.cli import main

ENV = "synth_toy_env:ToyEnv"


def synth(out: Path, *args: str) -> int:
    return main(["synth", "--env", ENV, "--policy", "oracle", "--seed", "3", "--out", str(out), *args])


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def task_ids(path: Path) -> list[str]:
    return [json.loads(line)["meta"]["task_id"] if "meta" in json.loads(line) else json.loads(line)["id"]
            for line in lines(path)]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """One unsharded run of the 30 held-in tasks, with 1 worker: the reference the other tests compare with."""
    out = tmp_path_factory.mktemp("full") / "toy.jsonl"
    assert synth(out, "--split", "held_in") == 0
    return out


# ---------------------------------------------------------------------------------------------------------


def test_oracle_solves_every_solvable_task_and_the_output_builds(full_run: Path, tmp_path: Path) -> None:
    records = list(read_trajectories(full_run))  # raises on any invalid record
    assert len(records) == 28 and all(r["meta"]["reward"] == 1.0 for r in records)
    assert all(r["meta"]["split"] == "held_in" and r["meta"]["env"] == "toy" for r in records)
    rejects = [json.loads(line) for line in lines(full_run.with_suffix(".rejects.jsonl"))]
    assert sorted(r["id"] for r in rejects) == ["toy_007", "toy_027"]
    assert {(r["reason"], r["cause"]) for r in rejects} == {("unsolvable", "not_a_number")}
    summary = json.loads(full_run.with_suffix(".summary.json").read_text())
    assert (summary["tasks"], summary["trajectories"], summary["solved"], summary["missing"]) == (30, 28, 28, 0)
    assert summary["reward_histogram"] == {"1.0": 28}
    assert summary["unsolvable_by_reason"] == {"not_a_number": 2}
    built = tmp_path / "built"
    assert main(["build", "--data", str(full_run), "--template", str(TEMPLATES / "qwen2.5-instruct.jinja"),
                 "--seq-len", "1024", "--out", str(built)]) == 0
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["records_in"] == 28 and manifest["kept"] == 28


def test_resume_skips_done_tasks_and_repairs_a_half_written_line(full_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "toy.jsonl"
    assert synth(out, "--split", "held_in", "--n", "12") == 0
    first = lines(out)
    # An interrupted run: the last trajectory half written.
    with open(out, "a") as f:
        f.write(lines(full_run)[11][:40])
    capsys.readouterr()
    assert synth(out, "--split", "held_in") == 0
    err = capsys.readouterr().out
    assert "half-written" in err and "resuming" in err
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["ran"] == 30 - 12 and summary["missing"] == 0
    assert lines(out)[:len(first)] == first  # done tasks untouched
    assert lines(out) == lines(full_run)  # same seed per task: the same trajectories as one run
    assert sorted(lines(out.with_suffix(".rejects.jsonl"))) == sorted(lines(full_run.with_suffix(".rejects.jsonl")))


def test_shards_merge_to_the_same_set_as_one_run(full_run: Path, tmp_path: Path, capsys) -> None:
    shards = [tmp_path / f"toy.{i}.jsonl" for i in range(2)]
    for i, shard in enumerate(shards):
        assert synth(shard, "--split", "held_in", "--shard", f"{i}/2") == 0
        assert lines(shard)  # both shards have work
    assert not set(task_ids(shards[0])) & set(task_ids(shards[1]))
    assert main(["synth", "merge", str(tmp_path / "half.jsonl"), str(shards[1])]) == 0
    assert "not among the inputs: shard 0/2" in capsys.readouterr().out
    merged = tmp_path / "merged.jsonl"
    assert main(["synth", "merge", str(merged), *map(str, shards), str(shards[0])]) == 0  # a repeat is deduplicated
    assert sorted(lines(merged)) == sorted(lines(full_run))
    assert task_ids(merged) == sorted(task_ids(merged))
    assert sorted(lines(merged.with_suffix(".rejects.jsonl"))) == sorted(lines(full_run.with_suffix(".rejects.jsonl")))
    summary = json.loads(merged.with_suffix(".summary.json").read_text())
    assert (summary["tasks"], summary["trajectories"], summary["rejected"], summary["missing"]) == (30, 28, 2, 0)


def test_two_workers_write_what_one_writes(full_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "toy.jsonl"
    assert synth(out, "--split", "held_in", "--workers", "2") == 0
    assert lines(out) == lines(full_run)


def test_errors_are_listed_exit_1_and_retried_on_resume(tmp_path: Path, capsys) -> None:
    out = tmp_path / "toy.jsonl"
    assert synth(out, "--split", "held_out") == 1  # toy_013's backend crashes
    rejects = [json.loads(line) for line in lines(out.with_suffix(".rejects.jsonl"))]
    errors = [r for r in rejects if r["reason"] == "error"]
    assert [(r["id"], r["cause"]) for r in errors] == [("toy_013", "RuntimeError")]
    assert "backend crashed" in errors[0]["detail"]
    capsys.readouterr()
    assert synth(out, "--split", "held_out") == 1
    assert "1 errors to retry" in capsys.readouterr().out
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["ran"] == 1 and summary["errors_by_type"] == {"RuntimeError": 1}
    assert len(lines(out.with_suffix(".rejects.jsonl"))) == len(rejects)  # replaced, not added


def test_other_settings_on_an_existing_output_are_refused(full_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "toy.jsonl"
    out.write_text(full_run.read_text())
    assert synth(out, "--split", "held_in") == 2  # no summary beside it: not a synth output
    assert "cannot be resumed" in capsys.readouterr().err
    out.with_suffix(".summary.json").write_text(full_run.with_suffix(".summary.json").read_text())
    assert main(["synth", "--env", ENV, "--seed", "4", "--split", "held_in", "--out", str(out)]) == 2
    assert "seed 3 -> 4" in capsys.readouterr().err
    assert synth(tmp_path / "x.jsonl", "--shard", "2/2") == 2
    assert "0 <= I < N" in capsys.readouterr().err
    assert main(["synth", "--env", "no_such_module:Env", "--out", str(tmp_path / "y.jsonl")]) == 2
    assert "cannot load" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# --paraphrase


class Rewriter:
    """A policy (the act interface) that rewrites "Add A and B." in other words, or answers nothing."""

    def __init__(self, silent: bool = False):
        self.silent, self.seen = silent, []

    def act(self, messages, tools):
        self.seen.append((messages, tools))
        a, b = re.findall(r"\d+", messages[-1]["content"])
        return {"role": "assistant", "content": "" if self.silent else f"Kindly work out the sum of {a} and {b}."}


def test_paraphrase_rewrites_the_instruction_and_keeps_the_original() -> None:
    task = {"id": "t", "env": "toy", "split": "held_in", "instruction": "Add 3 and 4.", "gold": 7, "meta": {"k": 1}}
    policy = Rewriter()
    new = paraphrase(policy, task)
    assert new["instruction"] == "Kindly work out the sum of 3 and 4."
    assert new["meta"] == {"k": 1, "original_instruction": "Add 3 and 4.", "paraphrased": True}
    (messages, tools), = policy.seen
    assert messages[-1] == {"role": "user", "content": "Add 3 and 4."} and tools == []
    assert "gold" not in json.dumps(messages) and task["instruction"] == "Add 3 and 4."  # the task is not changed
    kept = paraphrase(Rewriter(silent=True), task)
    assert kept["instruction"] == "Add 3 and 4." and kept["meta"]["paraphrased"] is False


def test_paraphrase_through_an_openai_compatible_server(tmp_path: Path) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, obj):
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # /v1/models
            self._send({"object": "list", "data": [{"id": "rewriter", "object": "model"}]})

        def do_POST(self):  # /v1/chat/completions
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reply = Rewriter().act(request["messages"], [])
            self._send({"id": "x", "object": "chat.completion", "model": "rewriter",
                        "choices": [{"index": 0, "message": reply, "finish_reason": "stop"}]})

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "toy.jsonl"
        assert synth(out, "--split", "held_in", "--n", "3", "--paraphrase",
                     f"openai:http://127.0.0.1:{server.server_address[1]}/v1") == 0
    finally:
        server.shutdown()
    records = [json.loads(line) for line in lines(out)]
    assert len(records) == 3 and all(r["meta"]["reward"] == 1.0 for r in records)
    for r in records:
        user = next(m["content"] for m in r["messages"] if m["role"] == "user")
        assert user.startswith("Kindly work out the sum of") and r["meta"]["original_instruction"].startswith("Add ")
