"""`trajtune train --dry-run`: what a shape (nodes × GPUs per node) would run, before anything is launched.

Through the real CLI on the shipped configs/train.yaml (global batch 64, micro 1, ZeRO-3): the batch arithmetic,
the DeepSpeed JSON and the exact deepspeed / torchrun / srun lines for 1×1, 1×8 and 4×8; a shape the config
cannot run on exits 2 naming the fix; the dry run imports neither torch nor deepspeed. The printed lines are
run through bash too: quoting holds, and the `$VAR` / `$(...)` pieces expand on the node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from trajtune.launcher.cli import main as cli_main

CONFIG = ROOT / "configs" / "train.yaml"
OVERRIDE = "output_dir=runs/my run"  # a space: the printed lines must quote it
ARGS = f"--config {CONFIG} 'output_dir=runs/my run'"
SLURM_HOST = '"$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"'
SRUN = "srun --nodes={n} --ntasks-per-node=1 --kill-on-bad-exit=1"


def dry_run(capsys, *shape: str, overrides: tuple[str, ...] = (OVERRIDE,)) -> tuple[int, str, str]:
    code = cli_main(["train", "--dry-run", *shape, "--config", str(CONFIG), *overrides])
    out, err = capsys.readouterr()
    return code, out, err


def section(out: str, title: str) -> str:
    """The text under `## TITLE...` up to the next `## ` heading."""
    start = out.index(f"\n## {title}")
    body = out[out.index("\n", start + 1) + 1:]
    return body.split("\n## ", 1)[0].strip()


EXPECTED = {
    (1, 1): (64, [
        "# one process, no launcher",
        f"trajtune train {ARGS}",
        "# deepspeed, on the node",
        f"deepspeed --num_gpus 1 --module trajtune.launcher.cli train {ARGS}",
        "# torchrun, on the node",
        f"torchrun --standalone --nproc-per-node 1 -m trajtune.launcher.cli train {ARGS}",
        "# Slurm, inside an allocation of 1 node(s) (sbatch / salloc): one task per node running torchrun",
        f"{SRUN.format(n=1)} torchrun --nnodes 1 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint "
        f'{SLURM_HOST}:29500 --rdzv-id "$SLURM_JOB_ID" -m trajtune.launcher.cli train {ARGS}',
    ]),
    (1, 8): (8, [
        "# deepspeed, on the node",
        f"deepspeed --num_gpus 8 --module trajtune.launcher.cli train {ARGS}",
        "# torchrun, on the node",
        f"torchrun --standalone --nproc-per-node 8 -m trajtune.launcher.cli train {ARGS}",
        "# Slurm, inside an allocation of 1 node(s) (sbatch / salloc): one task per node running torchrun",
        f"{SRUN.format(n=1)} torchrun --nnodes 1 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint "
        f'{SLURM_HOST}:29500 --rdzv-id "$SLURM_JOB_ID" -m trajtune.launcher.cli train {ARGS}',
    ]),
    (4, 8): (2, [
        "# MASTER_ADDR: the first node's hostname; hostfile: one line per node, `HOSTNAME slots=8`, the first node "
        "first",
        "# deepspeed, once on the first node (it starts the others over ssh / pdsh)",
        'deepspeed --hostfile hostfile --num_nodes 4 --num_gpus 8 --master_addr "$MASTER_ADDR" --master_port 29500 '
        f"--module trajtune.launcher.cli train {ARGS}",
        "# deepspeed without ssh, on every node with NODE_RANK=0..3",
        'deepspeed --hostfile hostfile --num_nodes 4 --num_gpus 8 --master_addr "$MASTER_ADDR" --master_port 29500 '
        f'--no_ssh --node_rank "$NODE_RANK" --module trajtune.launcher.cli train {ARGS}',
        "# torchrun, on every node (c10d rendezvous on the first node)",
        'torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR":29500 '
        f"-m trajtune.launcher.cli train {ARGS}",
        "# Slurm, inside an allocation of 4 node(s) (sbatch / salloc): one task per node running torchrun",
        f"{SRUN.format(n=4)} torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint "
        f'{SLURM_HOST}:29500 --rdzv-id "$SLURM_JOB_ID" -m trajtune.launcher.cli train {ARGS}',
    ]),
}


@pytest.mark.parametrize("shape", EXPECTED, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dry_run_prints_the_arithmetic_the_deepspeed_json_and_the_exact_commands(shape, capsys):
    nodes, gpus = shape
    accumulation, lines = EXPECTED[shape]
    code, out, err = dry_run(capsys, "--nodes", str(nodes), "--gpus-per-node", str(gpus))
    assert code == 0, err
    world = nodes * gpus
    assert out.startswith(f"# trajtune train --dry-run: {nodes} node(s) × {gpus} GPU(s) = world size {world}\n")
    config = section(out, "Resolved config")
    assert "output_dir: runs/my run" in config and "global_batch_size: 64" in config
    assert "timeout_minutes: 30.0" in config
    assert section(out, "Batch").splitlines() == [
        f"micro_batch_size 1 × accumulation {accumulation} × world size {world} = global_batch_size 64 packs per "
        "optimizer step",
        "steps: epochs=3 × the dataset's packs / 64 (counted when training starts)",
        "engine: deepspeed"]
    ds = json.loads(section(out, "DeepSpeed config"))
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == \
        (64, 1, accumulation)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"] == {"enabled": True}
    assert section(out, "Launch").splitlines() == lines


def shell_words(line: str) -> list[str]:
    """The words bash passes to the program of `line`, on a node where MASTER_ADDR=node01, NODE_RANK=2 and Slurm
    (a stub scontrol) says the allocation is node01, node02."""
    program, rest = line.split(" ", 1)
    script = ('scontrol() { printf "node01\\nnode02\\n"; }; export MASTER_ADDR=node01 NODE_RANK=2 SLURM_JOB_ID=42 '
              f"SLURM_JOB_NODELIST='node[01-02]'; printf '%s\\n' {program} {rest}")
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()


def test_printed_commands_give_trajtune_train_its_arguments_in_a_real_shell(capsys):
    _, out, _ = dry_run(capsys, "--nodes", "4", "--gpus-per-node", "8")
    deepspeed, no_ssh, torchrun, srun = (shell_words(line) for line in section(out, "Launch").splitlines()
                                         if not line.startswith("#"))
    for words in (deepspeed, no_ssh, torchrun, srun):
        assert words[-5:] == ["trajtune.launcher.cli", "train", "--config", str(CONFIG), OVERRIDE], words
    assert deepspeed[deepspeed.index("--master_addr") + 1] == "node01"
    assert no_ssh[no_ssh.index("--node_rank") + 1] == "2"
    assert torchrun[torchrun.index("--rdzv-endpoint") + 1] == "node01:29500"
    assert srun[:5] == ["srun", "--nodes=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "torchrun"]
    assert srun[srun.index("--rdzv-endpoint") + 1] == "node01:29500" and srun[srun.index("--rdzv-id") + 1] == "42"


def test_a_shape_the_config_cannot_run_on_exits_2_naming_the_fix(capsys):
    code, out, err = dry_run(capsys, "--nodes", "3", "--gpus-per-node", "8")
    assert code == 2 and out == ""
    assert "global_batch_size=64 is not a multiple of micro_batch_size=1 × world_size=24 = 24" in err
    assert "pick a global batch that is (e.g. 48) or change micro_batch_size" in err

    code, out, err = dry_run(capsys, "--gpus-per-node", "2", overrides=("engine=torch",))
    assert code == 2 and "engine=torch runs one process, but WORLD_SIZE=2; use engine=deepspeed" in err

    code, out, err = dry_run(capsys, "--nodes", "0")
    assert code == 2 and "--nodes must be >= 1, got 0" in err

    code, out, err = dry_run(capsys, overrides=("timeout_minutes=0",))
    assert code == 2 and "timeout_minutes must be > 0, got 0.0" in err

    # A shape without --dry-run would be a second way to start training: refused.
    assert cli_main(["train", "--config", str(CONFIG), "--nodes", "2"]) == 2
    assert "--nodes and --gpus-per-node shape a --dry-run only" in capsys.readouterr().err


def test_dry_run_imports_neither_torch_nor_deepspeed():
    probe = ("import sys; from trajtune.launcher.cli import main; "
             f"code = main(['train', '--dry-run', '--gpus-per-node', '8', '--config', {str(CONFIG)!r}]); "
             "print(code, sorted(m for m in ('torch', 'deepspeed', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "0 []"
