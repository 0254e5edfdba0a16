"""The Slurm templates on a real Slurm (tests/slurm_cluster.py: two nodes on localhost, two fake GPUs each).

Every job trains the same 2-rank ZeRO-3 CPU run (gloo) on the tiny dataset and model of tests/test_train.py, and
must log the losses of the same run started directly with the deepspeed launcher: through `trajtune slurm submit`
on one node, across two nodes with torchrun (c10d) and with `deepspeed --no_ssh`, and preempted twice, first by
Slurm's warning signal (`scancel --signal=USR1 --batch`, which the script hands to every rank) and then by
`scontrol requeue` (SIGTERM to every process): it checkpoints, requeues, resumes and ends with the same weights
as the run that never stopped. A job that fails every time stops at the requeue cap; bad input is never requeued;
an array job runs one command per index. Slurm's ~2 minute delay before a requeued job may start again is cut
short with `scontrol update StartTime=now`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, ROOT, TEMPLATES
from slurm_cluster import LocalSlurm
from test_train import make_run_inputs
from test_train_distributed import TRAJTUNE, deepspeed_cmd, metrics, run, run_args

from trajtune.launcher.slurm_nodes import expand_nodelist

pytestmark = pytest.mark.slow

STEPS = 100  # ~50 ms each: long enough to signal a running job twice


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    slurm, why = LocalSlurm.start(tmp_path_factory.mktemp("slurm"))
    if slurm is None:
        pytest.skip(why)
    yield slurm
    slurm.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run every job must reproduce: 2 ranks under the deepspeed launcher, no Slurm."""
    root = tmp_path_factory.mktemp("slurm_runs")
    data, model = make_run_inputs(root, n_packs=16)
    run(deepspeed_cmd(2, run_args(data, model, root / "direct", max_steps=STEPS)))
    return root, data, model


def shape(cluster: LocalSlurm) -> list[str]:
    """2 nodes × 1 rank, or 1 node × 2 ranks where this Slurm build runs one slurmd per host."""
    return ["--nodes", "2", "--gpus-per-node", "1"] if len(cluster.nodes) >= 2 else ["--gpus-per-node", "2"]


def job_env(cluster: LocalSlurm) -> dict[str, str]:
    # The job sees the submitting environment (sbatch --export=ALL): this interpreter's launchers first on PATH.
    return {**cluster.env, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def submit(cluster: LocalSlurm, *args: str) -> str:
    """`trajtune slurm submit ARGS` through the console script; returns the job id."""
    proc = subprocess.run([TRAJTUNE, "slurm", "submit", *args], env=job_env(cluster), capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return re.search(r"submitted job (\d+)", proc.stdout).group(1)


def output(run_dir: Path, job_id: str) -> str:
    return (run_dir / "slurm" / f"slurm-{job_id}.out").read_text(errors="replace")


def assert_same_losses(run_dir: Path, reference_dir: Path) -> None:
    got, want = metrics(run_dir), metrics(reference_dir)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    for step in want:
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], rel=1e-6), step


def wait_for_step(run_dir: Path, past: int, job_id: str, cluster: LocalSlurm, timeout: float = 180) -> None:
    """Until metrics.jsonl has a step beyond `past` (the job is mid-run)."""
    deadline = time.time() + timeout
    while not any(s > past for s in _steps(run_dir)):
        assert cluster.job(job_id)["JobState"] in ("PENDING", "RUNNING"), output(run_dir, job_id)[-3000:]
        assert time.time() < deadline, f"no step after {past} in {timeout} s"
        time.sleep(0.05)


def _steps(run_dir: Path) -> list[int]:
    try:
        return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or a line half written
        return []


def test_nodelist_parser_agrees_with_scontrol(cluster):
    for nodelist in ("gpu[01-03,07]", "n[8-10],cpu5", "rack[1-2]-gpu[08-09]", "x[001-002,010]"):
        shown = cluster.client(["scontrol", "show", "hostnames", nodelist]).stdout.split()
        assert expand_nodelist(nodelist) == shown, nodelist


def test_submit_single_node_trains_as_the_direct_run(cluster, reference):
    root, data, model = reference
    out = root / "single"
    job = submit(cluster, "--template", "single_node", "--gpus-per-node", "2", "--",
                 "train", *run_args(data, model, out, max_steps=STEPS))
    info = cluster.wait_for(job, ("COMPLETED", "FAILED", "CANCELLED"))
    assert info["JobState"] == "COMPLETED", output(out, job)[-3000:]
    assert_same_losses(out, root / "direct")
    assert (out / "slurm" / "single_node.sbatch").is_file()  # the script that ran is kept in the run directory
    assert "trajtune slurm: finished (exit 0)" in output(out, job)


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_multi_node_template_rendezvouses_and_trains(cluster, reference, launcher):
    root, data, model = reference
    out = root / f"multi_{launcher}"
    job = submit(cluster, "--template", "multi_node", "--launcher", launcher, *shape(cluster), "--",
                 "train", *run_args(data, model, out, max_steps=STEPS))
    info = cluster.wait_for(job, ("COMPLETED", "FAILED", "CANCELLED"))
    assert info["JobState"] == "COMPLETED", output(out, job)[-3000:]
    if len(cluster.nodes) >= 2:
        assert info["NodeList"] == "n[1-2]" and info["NumNodes"] == "2"
    assert_same_losses(out, root / "direct")
    if launcher == "deepspeed":
        assert (out / "slurm" / "hostfile").read_text() == "".join(
            f"{n} slots={2 // len(cluster.nodes[:2])}\n" for n in cluster.nodes[:2])


def test_preempted_twice_the_job_requeues_resumes_and_ends_with_the_same_weights(cluster, reference):
    from trajtune.trainer.engine import load_consolidated_state_dict

    root, data, model = reference
    out = root / "preempted"
    job = submit(cluster, "--template", "preemptible", *shape(cluster), "--signal-lead", "60", "--",
                 "train", *run_args(data, model, out, max_steps=STEPS))

    # 1. Slurm's warning signal, as `--signal=B:USR1@60` sends it: only the batch shell gets it.
    wait_for_step(out, 3, job, cluster)
    # A second job on the same run directory would write the same checkpoints: refused while this one runs.
    again = subprocess.run([TRAJTUNE, "slurm", "submit", "--template", "preemptible", *shape(cluster), "--",
                            "train", *run_args(data, model, out, max_steps=STEPS)], env=job_env(cluster),
                           capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 2 and f"job {job} of {out} is still RUNNING" in again.stderr
    cluster.client(["scancel", "--signal=USR1", "--batch", job])
    cluster.wait_for(job, ("PENDING",), release=False)
    first = re.findall(r"SIGUSR1: stopped at step (\d+)", output(out, job))
    assert len(first) == 1 and 3 < int(first[0]) < STEPS, output(out, job)[-3000:]
    stop1 = int(first[0])
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step_{stop1:08d}"
    text = output(out, job)
    world = 2
    for rank in range(world):  # the script handed SIGUSR1 to every rank itself, on its node
        assert re.search(rf"sent USR1 to rank_{rank}\.pid \(pid \d+ on n\d\)", text), text[-3000:]
        rank_log = out / "logs" / f"rank_{rank}.log"  # per-rank logs, where the trainer writes them
        if rank_log.is_file():
            assert f"SIGUSR1: stopped at step {stop1} " in rank_log.read_text()

    # 2. `scontrol requeue` (what Slurm's own preemption does): SIGTERM to every process of the job.
    cluster.wait_for(job, ("RUNNING",))  # released from the requeue delay
    wait_for_step(out, stop1 + 3, job, cluster)
    cluster.client(["scontrol", "requeue", job])
    cluster.wait_for(job, ("PENDING",), release=False)
    second = re.findall(r"SIGTERM: stopped at step (\d+)", output(out, job))
    assert len(second) == 1 and stop1 < int(second[0]) < STEPS, output(out, job)[-3000:]

    info = cluster.wait_for(job, ("COMPLETED", "FAILED", "CANCELLED"))
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "2", output(out, job)[-3000:]
    events = (out / "slurm" / "events.log").read_text()
    for line in (f"job {job} start 0: SIGUSR1 (preemption notice)",
                 f"job {job} start 0: preempted, checkpoint written: requeueing (requeue 1 of at most 5)",
                 f"job {job} start 1: requeued start 1 on", f"job {job} start 1: stopped by SIGTERM;",
                 f"job {job} start 2: requeued start 2 on", f"job {job} start 2: finished (exit 0)"):
        assert line in events, events
    assert_same_losses(out, root / "direct")
    resumed, direct = load_consolidated_state_dict(out), load_consolidated_state_dict(root / "direct")
    assert resumed.keys() == direct.keys()
    for name in direct:
        torch.testing.assert_close(resumed[name], direct[name], atol=0, rtol=0)

    status = subprocess.run([TRAJTUNE, "slurm", "status", str(out)], env=job_env(cluster), capture_output=True,
                            text=True, check=True).stdout
    assert f"job {job}: COMPLETED (scontrol); restarts 2, starts logged 3" in status
    assert f"last step {STEPS}:" in status and f"latest step_{STEPS:08d}" in status


def test_requeue_cap_stops_a_job_that_fails_every_time_and_bad_input_is_not_requeued(cluster, reference, tmp_path):
    root, data, model = reference
    # DeepSpeed rejects this config after the model loaded: a crash (exit 1), not input trajtune can check first.
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"zero_optimization": {"stage": 2, "no_such_setting": 1}}))
    out = tmp_path / "failing"
    job = submit(cluster, "--template", "preemptible", "--gpus-per-node", "1", "--max-requeues", "1", "--",
                 "train", *run_args(data, model, out, engine="deepspeed", ds_config=broken, global_batch_size=1))
    info = cluster.wait_for(job, ("COMPLETED", "FAILED", "CANCELLED"))
    events = (out / "slurm" / "events.log").read_text()
    assert info["JobState"] == "FAILED" and info["Restarts"] == "1", events
    assert re.search(rf"job {job} start 0: failed \(exit \d+\): requeueing \(requeue 1 of at most 1\)", events)
    assert re.search(rf"job {job} start 1: failed \(exit \d+\), and requeued 1 time\(s\) already \(MAX_REQUEUES=1\): "
                     "not requeueing", events), events

    out = tmp_path / "bad_input"
    # The deepspeed launcher passes a rank's exit status on (torchrun reports any failed rank as 1).
    job = submit(cluster, "--template", "preemptible", "--launcher", "deepspeed", "--gpus-per-node", "1", "--",
                 "train", *run_args(data, tmp_path / "no_model", out))
    info = cluster.wait_for(job, ("COMPLETED", "FAILED", "CANCELLED"))
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0"
    assert "bad input (exit 2, the error is above): not requeueing" in (out / "slurm" / "events.log").read_text()


def test_array_job_runs_a_command_per_index(cluster, tmp_path):
    agent = tmp_path / "agent.jsonl"
    run([TRAJTUNE, "convert", str(FIXTURES / "datasets" / "openai_chat_tools.jsonl"), "--from", "openai",
         "--out", str(agent), "--quarantine", str(tmp_path / "q.jsonl")])
    ids = [json.loads(line)["id"] for line in agent.read_text().splitlines()]
    out = tmp_path / "array"
    job = submit(cluster, "--template", "array", "--array", "0-1", "--run-dir", str(out), "--",
                 "render", "--data", str(agent), "--template", str(TEMPLATES / "qwen2.5-instruct.jinja"),
                 "--index", "{index}", "--json")
    deadline = time.time() + 120
    while cluster.client(["squeue", "-h", "-j", job], check=False).stdout.strip():
        assert time.time() < deadline, "the array job did not finish in 120 s"
        time.sleep(0.2)
    for index in (0, 1):
        text = (out / "slurm" / f"slurm-{job}_{index}.out").read_text()
        rendered = json.loads(text[text.index("{"):text.rindex("}") + 1])
        assert rendered["id"] == ids[index], text
        assert f"task {index} finished (exit 0)" in text
