"""`trajtune filter` through the real CLI: one crafted bad trajectory per reason, each rejected at its stage and
counted; the good ones (one with a recovered tool error) kept; the books reconcile."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import FIXTURES, TEMPLATES

from trajtune.launcher.cli import main

BFCL_SIMPLE = FIXTURES / "bfcl" / "BFCL_v3_simple.json"


def base() -> dict:
    """A real fixture record (a weather call and its result) with a final answer and a reward: passes every stage."""
    with open(FIXTURES / "datasets" / "openai_chat_tools.jsonl") as f:
        record = next(json.loads(line) for line in f if "mistral_v03_tool_call_with_id" in line)
    record["messages"].append({"role": "assistant", "content": "It is 22 °C in Paris right now."})
    record["meta"] = {"reward": 1.0}
    return record


def variant(rid: str, edit=None) -> dict:
    record = base()
    record["id"] = rid
    if edit:
        edit(record)
    return record


def call_of(record: dict) -> dict:
    return record["messages"][2]["tool_calls"][0]


def retry(record: dict, first_content: str) -> None:
    """The call answered by `first_content`, then made again and answered as in the fixture."""
    m = record["messages"]
    again = copy.deepcopy(m[2])
    again["tool_calls"][0]["id"] = "retry1"
    m[3:3] = [{**m[3], "content": first_content}, again]
    m[5]["tool_call_id"] = "retry1"
    # Its own words, so that near-dedup does not take it for the base record.
    m[1]["content"] = "The service is flaky today: could you find out how warm Paris is at the moment for me?"
    m[-1]["content"] = "After one retry, the thermometer reading says twenty-two degrees Celsius there."


ERROR = json.dumps({"error": {"type": "unavailable", "message": "weather service timed out"}})
LONG_ANSWER = " ".join(f"word{i % 37} detail{i % 11} paris weather" for i in range(50))
EXPECTED = {  # id -> (stage, reason)
    "undefined_tool": ("format", "undefined_tool"),
    "args_schema": ("format", "args_schema"),
    "unanswered_call": ("format", "unanswered_call"),
    "not_trained": ("format", "no_trained_token"),
    "error_unrecovered": ("execution", "unrecovered_tool_error"),
    "loop": ("execution", "repeated_call"),
    "low_reward": ("semantic", "low_reward"),
    "no_reward": ("semantic", "no_reward"),
    "contaminated": ("decontam", "contaminated"),
    "overlong": ("length", "overlong"),
    "duplicate_of_good": ("dedup", "duplicate"),
    "near_duplicate": ("dedup", "near_duplicate"),
}


def crafted() -> list[dict]:
    def loop(r):
        m = r["messages"]
        for k in range(2):
            call = copy.deepcopy(m[2])
            call["tool_calls"][0]["id"] = f"loop{k}"
            m[4:4] = [call, {**m[3], "tool_call_id": f"loop{k}"}]

    return [
        variant("good"),
        variant("recovered", lambda r: retry(r, ERROR)),  # an error, then the same tool succeeds: kept
        variant("long_good", lambda r: r["messages"][-1].update(content=LONG_ANSWER)),
        variant("undefined_tool", lambda r: call_of(r)["function"].update(name="get_humidity")),
        variant("args_schema", lambda r: call_of(r)["function"]["arguments"].update(unit="kelvin")),
        variant("unanswered_call", lambda r: r.update(messages=r["messages"][:3])),
        variant("not_trained", lambda r: [m.update(loss=False) for m in r["messages"] if m["role"] == "assistant"]),
        variant("error_unrecovered", lambda r: r["messages"][3].update(content=ERROR)),
        variant("loop", loop),
        variant("low_reward", lambda r: r["meta"].update(reward=0.5)),
        variant("no_reward", lambda r: r.pop("meta")),
        variant("contaminated", lambda r: r["messages"][1].update(
            content="Find the area of a triangle with a base of 10 units and height of 5 units.")),
        variant("overlong", lambda r: r["messages"][-1].update(content=" ".join(["very long answer"] * 300))),
        variant("duplicate_of_good"),
        variant("near_duplicate", lambda r: r["messages"][-1].update(content=LONG_ANSWER + " indeed")),
    ]


@pytest.fixture(scope="module")
def filtered(tmp_path_factory) -> tuple[Path, Path, dict]:
    work = tmp_path_factory.mktemp("filter")
    data = work / "in.jsonl"
    with open(data, "w") as f:
        for record in crafted():
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.write('{"id": "cut", "messages": [{"role": "us\n')  # a broken line
    out, rejects = work / "kept.jsonl", work / "rejected.jsonl"
    assert main(["filter", "--data", str(data), "--out", str(out), "--rejects", str(rejects), "--dedup", "near",
                 "--template", str(TEMPLATES / "qwen2.5-instruct.jinja"), "--seq-len", "4096",
                 "--decontam", str(BFCL_SIMPLE)]) == 0
    return out, rejects, json.loads(out.with_suffix(".manifest.json").read_text())


def test_each_bad_trajectory_is_rejected_at_its_stage_with_its_reason(filtered) -> None:
    out, rejects, _ = filtered
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in kept] == ["good", "recovered", "long_good"]
    got = {(r["id"] or r["line"]): (r["stage"], r["reason"]) for r in map(json.loads, rejects.read_text().splitlines())}
    assert got == {**EXPECTED, 16: ("format", "bad_json")}
    by_id = {r["id"]: r for r in map(json.loads, rejects.read_text().splitlines())}
    assert "no later call of get_current_temperature succeeded" in by_id["error_unrecovered"]["detail"]
    assert "called 3 times" in by_id["loop"]["detail"]
    assert by_id["contaminated"]["detail"] == "overlaps eval items: simple_0"
    assert by_id["duplicate_of_good"]["detail"].endswith("in.jsonl:1")  # the first record kept, named by file:line
    assert by_id["near_duplicate"]["detail"].endswith("in.jsonl:3")
    assert json.loads(by_id["loop"]["raw"])["id"] == "loop"  # the rejected record itself is kept


def test_manifest_counts_each_stage_and_reconciles(filtered) -> None:
    _, _, manifest = filtered
    assert (manifest["records_in"], manifest["kept"], manifest["rejected"]) == (16, 3, 13)
    stages = {s["stage"]: (s["in"], s["kept"], s["rejected"]) for s in manifest["stages"]}
    assert stages == {
        "format": (16, 11, {"bad_json": 1, "undefined_tool": 1, "args_schema": 1, "unanswered_call": 1,
                            "no_trained_token": 1}),
        "execution": (11, 9, {"unrecovered_tool_error": 1, "repeated_call": 1}),
        "semantic": (9, 7, {"low_reward": 1, "no_reward": 1}),
        "decontam": (7, 6, {"contaminated": 1}),
        "length": (6, 5, {"overlong": 1}),
        "dedup": (5, 3, {"duplicate": 1, "near_duplicate": 1}),
    }
    assert set(manifest["reasons"]) == {r for _, r in EXPECTED.values()} | {"bad_json"}
    assert all(manifest["reasons"].values())  # each reason described


def test_skipped_stages_and_usage_errors(tmp_path: Path, capsys) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in crafted()))
    out = tmp_path / "kept.jsonl"
    assert main(["filter", "--data", str(data), "--out", str(out), "--min-reward", "none", "--dedup", "none"]) == 0
    manifest = json.loads(out.with_suffix(".manifest.json").read_text())
    skipped = {s["stage"] for s in manifest["stages"] if s["skipped"]}
    assert skipped == {"semantic", "decontam", "length", "dedup"}
    assert manifest["kept"] == 15 - 6  # format 4 and execution 2 rejected; nothing else looked at
    assert (tmp_path / "kept.rejects.jsonl").is_file()  # the default --rejects
    capsys.readouterr()
    assert main(["filter", "--data", str(data), "--out", str(out), "--seq-len", "512"]) == 2
    assert "--tokenizer DIR" in capsys.readouterr().err
    assert main(["filter", "--data", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert main(["filter", "--data", str(data), "--out", str(data)]) == 2
