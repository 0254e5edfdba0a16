"""Synthesis on the built-in environments, through the real CLI: synth -> filter -> build.

The oracle solves every AgentBench DB dev task it can from its query results (every INSERT/UPDATE task) and
lists the others with the reason; generated apis tasks all reach reward 1; the trajectories pass `trajtune
filter` and `trajtune build` with a fixture template.
"""

import json
import subprocess
import sys
from pathlib import Path

from conftest import FIXTURES, TEMPLATES


def trajtune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trajtune.launcher.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sql_and_apis_oracle_trajectories_filter_and_build(tmp_path: Path):
    dev = FIXTURES / "agentbench_db" / "dev.jsonl"
    proc = trajtune("synth", "--env", "sql", "--tasks", str(dev), "--split", "all", "--out", "sql.jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "sql.summary.json").read_text())
    assert summary["tasks"] == 60 and summary["solved"] == 44 and summary["trajectories"] == 44
    rejects = lines(tmp_path / "sql.rejects.jsonl")
    assert len(rejects) == 16 and {r["reason"] for r in rejects} == {"unsolvable"}
    # Only SELECT tasks are left unsolved, counted by why (the summary groups the oracle's reasons).
    assert {r["task"]["gold"]["kind"] for r in rejects} == {"select"}
    assert summary["unsolvable_by_reason"] == {"the reference query fails in SQLite": 8,
                                               "the reference query does not reproduce the label": 8}
    solved = lines(tmp_path / "sql.jsonl")
    assert {r["meta"]["reward"] for r in solved} == {1.0} and all(r["meta"]["env"] == "sql" for r in solved)

    proc = trajtune("synth", "--env", "apis", "--n", "30", "--split", "all", "--workers", "2", "--out", "apis.jsonl",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    apis = lines(tmp_path / "apis.jsonl")
    assert len(apis) == 30 and {r["meta"]["reward"] for r in apis} == {1.0}
    assert {r["meta"]["split"] for r in apis} == {"held_in", "held_out"}

    for name in ("sql", "apis"):
        proc = trajtune("filter", "--data", f"{name}.jsonl", "--out", f"{name}.kept.jsonl", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert len(lines(tmp_path / f"{name}.kept.jsonl")) == len(lines(tmp_path / f"{name}.jsonl"))
    proc = trajtune("build", "--data", "sql.kept.jsonl", "--data", "apis.kept.jsonl", "--template",
                    str(TEMPLATES / "qwen2.5-instruct.jinja"), "--seq-len", "4096", "--out", "built", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "built" / "manifest.json").read_text())
    assert manifest["dropped"] == 0 and manifest["kept"] == 44 + 30 and manifest["train"]["packs"] > 0
