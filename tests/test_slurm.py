"""Slurm without a cluster: node-list expansion, the command lines every template runs, submit's checks, status.

The templates are rendered by the real `trajtune slurm submit --dry-run`, then run by bash with a made-up Slurm
environment and TRAJTUNE_DRY_RUN=1, which makes them print each command (`+ ...`) instead of running it; with
SLURM_CONF pointing nowhere, scontrol fails and the node list goes through trajtune's own parser.
tests/test_slurm_cluster.py runs the same templates on a real Slurm.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from trajtune.data_builders.errors import TrajtuneError
from trajtune.launcher.cli import main as cli_main
from trajtune.launcher.slurm_nodes import expand_nodelist
from trajtune.launcher.slurm_nodes import main as nodes_main

TRAIN = ["train", "model=models/tiny", "data=built/agent", "global_batch_size=48", "lora.targets=[q_proj, v_proj]"]
CLI = ["-m", "trajtune.launcher.cli"]


# --- node lists ---

@pytest.mark.parametrize("nodelist, hosts", [
    ("gpu07", ["gpu07"]),
    ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
    ("gpu[08-10]", ["gpu08", "gpu09", "gpu10"]),  # the width of the low end is the padding, kept past 09
    ("n[8-10]", ["n8", "n9", "n10"]),
    ("a[1-2],b[001-002],c5", ["a1", "a2", "b001", "b002", "c5"]),
    ("rack[1-2]-gpu[1-2]", ["rack1-gpu1", "rack1-gpu2", "rack2-gpu1", "rack2-gpu2"]),
    ("x[3],y-ib[0-1].cluster", ["x3", "y-ib0.cluster", "y-ib1.cluster"]),
])
def test_node_lists_expand_as_scontrol_show_hostnames(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist, why", [
    ("gpu[01-03", "a '[' is never closed"),
    ("gpu01-03]", "']' at character 9 closes nothing"),
    ("gpu[03-01]", "range 03-01 runs backwards"),
    ("gpu[a-b]", "[a-b] holds 'a-b', which is neither a number nor a lo-hi range"),
    ("gpu[[1]]", "unbalanced brackets"),
    ("", "no host in it"),
])
def test_a_malformed_node_list_is_an_error_naming_it(nodelist, why, capsys):
    with pytest.raises(TrajtuneError) as e:
        expand_nodelist(nodelist)
    assert f"node list {nodelist!r}: {why}" in str(e.value) and "gpu[01-03,07],cpu5" in str(e.value)
    assert nodes_main([nodelist]) == 2  # what a template falls back to without scontrol
    assert why in capsys.readouterr().err


# --- templates: render with submit --dry-run, run with TRAJTUNE_DRY_RUN=1 ---

def submit_dry_run(run_dir: Path, *options: str, command: list[str] | None = None) -> Path:
    """`trajtune slurm submit --dry-run OPTIONS -- COMMAND`; returns the rendered script."""
    command = command or [*TRAIN, f"output_dir={run_dir}"]
    extra = [] if command[0] == "train" else ["--run-dir", str(run_dir)]
    assert cli_main(["slurm", "submit", *options, *extra, "--dry-run", "--", *command]) == 0
    (script,) = (run_dir / "slurm").glob("*.sbatch")
    return script


@pytest.fixture(scope="module")
def no_slurm_bin(tmp_path_factory) -> Path:
    """A PATH folder with the tools the templates use, but no Slurm command (as in a container without them)."""
    bin_dir = tmp_path_factory.mktemp("bin")
    for tool in ("bash", "sed", "head", "mkdir", "rm", "date", "find", "wc", "sleep", "hostname", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return bin_dir


def dry_run(script: Path, *args: str, bin_dir: Path, **env: str) -> list[list[str]]:
    """Run `script` as Slurm would on the first node, printing its commands; returns them as argv lists."""
    base = {"PATH": str(bin_dir), "PYTHONPATH": os.pathsep.join(sys.path), "PYTHON": sys.executable,
            "SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "gpu[07-08]",
            "SLURM_SUBMIT_DIR": str(script.parent), "TRAJTUNE_DRY_RUN": "1"}
    proc = subprocess.run([str(bin_dir / "bash"), str(script), *args], env={**base, **env}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


def test_single_node_runs_deepspeed_with_one_rank_per_gpu(tmp_path, no_slurm_bin):
    script = submit_dry_run(tmp_path / "run", "--gpus-per-node", "8")
    text = script.read_text()
    for line in ("#SBATCH --nodes=1", "#SBATCH --gpus-per-node=8", f"#SBATCH --chdir={os.getcwd()}",
                 f"#SBATCH --output={tmp_path / 'run' / 'slurm' / 'slurm-%j.out'}", "#SBATCH --job-name=trajtune-run"):
        assert line in text.splitlines(), line
    assert dry_run(script, bin_dir=no_slurm_bin) == [[
        "deepspeed", "--num_gpus=8", "--master_port=21234", "--no_local_rank", "--module", "trajtune.launcher.cli",
        *TRAIN, f"output_dir={tmp_path / 'run'}"]]


def test_multi_node_torchrun_rendezvouses_on_the_first_host(tmp_path, no_slurm_bin):
    run_dir = tmp_path / "run"
    script = submit_dry_run(run_dir, "--template", "multi_node", "--nodes", "2", "--gpus-per-node", "8",
                            "--partition", "gpu", "--account", "proj", "--time", "2:00:00")
    lines = script.read_text().splitlines()
    assert {"#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --time=2:00:00"} <= set(lines)
    assert dry_run(script, bin_dir=no_slurm_bin, SLURM_CPUS_PER_TASK="16") == [[
        "srun", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=16", "--kill-on-bad-exit=1",
        "torchrun", "--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=gpu07:21234",
        "--rdzv-id=1234", *CLI, *TRAIN, f"output_dir={run_dir}"]]


def test_multi_node_deepspeed_runs_no_ssh_per_node_with_a_hostfile(tmp_path, no_slurm_bin):
    run_dir = tmp_path / "run"
    script = submit_dry_run(run_dir, "--template", "multi_node", "--launcher", "deepspeed", "--nodes", "3",
                            "--gpus-per-node", "4")
    (srun,) = dry_run(script, bin_dir=no_slurm_bin, SLURM_JOB_NODELIST="gpu[09-10],cpu1")
    hostfile = run_dir / "slurm" / "hostfile"
    assert srun == ["srun", "--nodes=3", "--ntasks-per-node=1", "--cpus-per-task=1", "--kill-on-bad-exit=1",
                    "bash", "-c", 'exec deepspeed --node_rank="$SLURM_NODEID" "$@"', "deepspeed", "--no_ssh",
                    f"--hostfile={hostfile}", "--master_addr=gpu09", "--master_port=21234", "--no_local_rank",
                    "--module", "trajtune.launcher.cli", *TRAIN, f"output_dir={run_dir}"]
    assert hostfile.read_text() == "gpu09 slots=4\ngpu10 slots=4\ncpu1 slots=4\n"


def test_preemptible_signals_requeues_and_takes_the_cluster_knobs(tmp_path, no_slurm_bin):
    run_dir = tmp_path / "run"
    script = submit_dry_run(run_dir, "--template", "preemptible", "--nodes", "2", "--gpus-per-node", "2",
                            "--signal-lead", "60", "--max-requeues", "3")
    lines = script.read_text().splitlines()
    assert {"#SBATCH --signal=B:USR1@60", "#SBATCH --requeue", "#SBATCH --open-mode=append"} <= set(lines)
    assert "MAX_REQUEUES=3  # set by trajtune slurm submit" in lines
    (srun,) = dry_run(script, bin_dir=no_slurm_bin, SRUN_ARGS="--container-image=img.sqsh --container-mounts=/data",
                      CONTAINER="apptainer exec --nv img.sif", SLURM_JOB_NODELIST="n[1-2]")
    assert srun == ["srun", "--container-image=img.sqsh", "--container-mounts=/data", "--nodes=2",
                    "--ntasks-per-node=1", "--cpus-per-task=1", "--kill-on-bad-exit=1", "apptainer", "exec", "--nv",
                    "img.sif", "torchrun", "--nnodes=2", "--nproc-per-node=2", "--rdzv-backend=c10d",
                    "--rdzv-endpoint=n1:20340", "--rdzv-id=1234-0", *CLI, *TRAIN, f"output_dir={run_dir}"]
    # A requeued start rendezvouses afresh: another port and id than the start before it.
    (srun,) = dry_run(script, bin_dir=no_slurm_bin, SLURM_JOB_NODELIST="n[1-2]", SLURM_RESTART_COUNT="1")
    assert "--rdzv-endpoint=n1:20341" in srun and "--rdzv-id=1234-1" in srun
    events = (run_dir / "slurm" / "events.log").read_text()
    assert "job 1234 start 0: start on n[1-2]: 2 node(s) x 2 rank(s), torchrun" in events


def test_preemptible_warns_when_the_signal_lead_is_shorter_than_a_step_and_a_checkpoint(tmp_path, no_slurm_bin):
    run_dir = tmp_path / "run"
    script = submit_dry_run(run_dir, "--template", "preemptible", "--gpus-per-node", "1", "--signal-lead", "60")
    (run_dir / "logs").mkdir()
    (run_dir / "logs" / "timing.json").write_text(json.dumps({"world_size": 1, "step_seconds": 20.4,
                                                              "checkpoint_seconds": 45.0}))
    dry_run(script, bin_dir=no_slurm_bin)
    events = (run_dir / "slurm" / "events.log").read_text()
    assert "warning: a step + a checkpoint take 65.4 s" in events and "submit with --signal-lead 162" in events
    (run_dir / "logs" / "timing.json").write_text(json.dumps({"step_seconds": 2.0, "checkpoint_seconds": 5.0}))
    dry_run(script, bin_dir=no_slurm_bin)
    events = (run_dir / "slurm" / "events.log").read_text()
    assert "a step + a checkpoint take 7.0 s, within the 60 s signal lead" in events


def test_array_runs_one_command_per_index(tmp_path, no_slurm_bin):
    command = ["render", "--data", "shard_{index}_of_{count}.jsonl", "--index", "{index}"]
    script = submit_dry_run(tmp_path / "arr", "--template", "array", "--array", "0-7", command=command)
    lines = script.read_text().splitlines()
    assert "#SBATCH --array=0-7" in lines
    assert f"#SBATCH --output={tmp_path / 'arr' / 'slurm' / 'slurm-%A_%a.out'}" in lines
    assert dry_run(script, bin_dir=no_slurm_bin, SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_COUNT="8") == [
        ["trajtune", "render", "--data", "shard_3_of_8.jsonl", "--index", "3"]]


def test_a_template_by_hand_runs_its_arguments(tmp_path, no_slurm_bin):
    # `sbatch slurm/multi_node.sbatch train ...`: the unrendered template takes the command from its arguments.
    script = tmp_path / "multi_node.sbatch"
    script.write_text((ROOT / "slurm" / "multi_node.sbatch").read_text())
    (srun,) = dry_run(script, "train", "--config", "run.yaml", bin_dir=no_slurm_bin, SLURM_GPUS_PER_NODE="a100:4")
    assert srun[srun.index("torchrun"):] == ["torchrun", "--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d",
                                            "--rdzv-endpoint=gpu07:21234", "--rdzv-id=1234", *CLI, "train",
                                            "--config", "run.yaml"]
    assert (tmp_path / "slurm-1234" / "slurm" / "events.log").is_file()  # RUN_DIR defaults beside the submit


# --- the trainer's side: pid files the preemptible script signals ---

def test_each_rank_announces_its_pid_for_the_batch_script_and_removes_it_on_exit(tmp_path, monkeypatch):
    import signal

    from test_train import config, make_run_inputs, wrap_loss

    from trajtune.trainer import loop

    data, model = make_run_inputs(tmp_path / "inputs", n_packs=8)
    pid_dir = tmp_path / "pids"
    monkeypatch.setenv("TRAJTUNE_PID_DIR", str(pid_dir))
    monkeypatch.setenv("SLURMD_NODENAME", "n7")
    seen = []

    def signal_as_the_script_does(n, loss):
        if n == 3:  # during step 2: read the rank's pid file and send SIGUSR1 to that pid, as signal_ranks does
            node, pid = (pid_dir / "rank_0.pid").read_text().split()
            seen.append(node)
            os.kill(int(pid), signal.SIGUSR1)
        return loss

    wrap_loss(monkeypatch, signal_as_the_script_does)
    result = loop.train(config(data, model, tmp_path / "run"))
    assert seen == ["n7"] and result["stopped"] and result["signal"] == signal.SIGUSR1 and result["step"] == 2
    assert list(pid_dir.iterdir()) == []  # gone before the handlers are: a late signal finds no pid to kill


# --- submit's checks, before anything is queued ---

@pytest.mark.parametrize("options, command, message", [
    (["--template", "single_node", "--nodes", "2", "--gpus-per-node", "8"], TRAIN,
     "--template single_node runs on one node, not 2; use --template multi_node"),
    (["--template", "multi_node", "--nodes", "2"], TRAIN, "give --gpus-per-node G (G >= 1)"),
    (["--nodes", "2", "--gpus-per-node", "5"], TRAIN,
     "global_batch_size=48 is not a multiple of micro_batch_size=1 × world_size=10"),
    (["--gpus-per-node", "1"], ["convert", "x.json", "--out", "y.jsonl"], "run other commands with --template array"),
    (["--template", "array", "--array", "0-1"], ["convert", "x.json"], "give --run-dir DIR for a convert job"),
    (["--template", "array"], ["render"], "--array goes with --template array"),
    (["--gpus-per-node", "1"], ["trian", "--config", "run.yaml"], "'trian' is not a trajtune command"),
    (["--gpus-per-node", "1"], [], "no command to submit: put the trajtune command after `--`"),
    (["--gpus-per-node", "1"], [*TRAIN, "lr=-1"], "lr must be > 0"),
    (["--gpus-per-node", "1", "--signal-lead", "60"], TRAIN, "--signal-lead and --max-requeues go with --template "
                                                              "preemptible"),
])
def test_submit_refuses_what_cannot_run(options, command, message, capsys):
    assert cli_main(["slurm", "submit", *options, "--", *command]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trajtune slurm: error: ") and message in err, err


def test_submit_without_sbatch_says_so_and_keeps_the_script(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cli_main(["slurm", "submit", "--gpus-per-node", "1", "--", *TRAIN, f"output_dir={tmp_path}/run"]) == 2
    assert "sbatch is not on PATH: submit from a Slurm login node" in capsys.readouterr().err
    assert (tmp_path / "run" / "slurm" / "single_node.sbatch").is_file()


# --- status, from the run directory's files ---

def test_status_shows_jobs_steps_checkpoints_rank_logs_and_the_lead_verdict(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    submit_dry_run(run_dir, "--template", "preemptible", "--gpus-per-node", "2", "--signal-lead", "30")
    slurm = run_dir / "slurm"
    (slurm / "jobs.log").write_text("41 preemptible 2026-12-01T10:00:00\n")
    (slurm / "events.log").write_text("2026-12-01T10:00:01 job 41 start 0: start on n1: ...\n"
                                      "2026-12-01T10:09:00 job 41 start 0: preempted, checkpoint written: requeueing\n"
                                      "2026-12-01T10:11:00 job 41 start 1: requeued start 1 on n2: resuming\n")
    (slurm / "slurm-41.out").write_text("one\ntwo\nthree\nfour\n")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5.0 - s / 10}) + "\n"
                                                   for s in (1, 2, 3)))
    for step in ("step_00000002", "step_00000003"):
        (run_dir / "checkpoints" / step).mkdir(parents=True)
    (run_dir / "checkpoints" / "latest").write_text("step_00000003\n")
    (run_dir / "logs").mkdir()
    for rank in (0, 1, 10):
        (run_dir / "logs" / f"rank_{rank}.log").write_text("".join(f"rank {rank} line {i}\n" for i in range(6)))
    (run_dir / "logs" / "timing.json").write_text(json.dumps({"step_seconds": 10.0, "checkpoint_seconds": 25.0}))
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm"))  # no squeue / scontrol / sacct here
    assert cli_main(["slurm", "status", str(run_dir), "--lines", "2"]) == 0
    out = capsys.readouterr().out
    assert "job 41: unknown (no Slurm command knows it any more) (-); restarts ?, starts logged 2" in out
    assert "last step 3: loss 4.7" in out
    assert "checkpoints: step_00000002, step_00000003; latest step_00000003" in out
    assert "a step + a checkpoint take 35.0 s; the signal lead 30 s is SHORTER" in out
    assert "slurm/slurm-41.out (last 2 lines):\n  three\n  four" in out
    assert out.index("logs/rank_1.log") < out.index("logs/rank_10.log")  # by rank number
    assert "logs/rank_0.log:\n  rank 0 line 4\n  rank 0 line 5\n" in out


def test_status_of_a_directory_without_jobs_is_an_error(tmp_path, capsys):
    assert cli_main(["slurm", "status", str(tmp_path)]) == 2
    assert f"{tmp_path} has no Slurm job (no slurm/jobs.log nor slurm/events.log)" in capsys.readouterr().err
