"""Launcher command lines for a training shape (nodes × GPUs per node): `deepspeed`, `torchrun`, `srun`.

Pure string building, no torch: `trajtune train --dry-run` prints these lines and the Slurm templates can be
rendered from them. Each function returns an argv list; `shell_line` joins one for a shell, quoting every
argument except `Shell` pieces, which are shell text on purpose (`"$MASTER_ADDR"`, a `$(...)` substitution) and
expand where the line runs. Every rank runs `python -m trajtune.launcher.cli train ARGS`, i.e. `trajtune train`
as a user types it: a launcher only decides how many ranks run, and where.

    >>> shell_line(torchrun_command(["--config", "run.yaml"], nodes=1, gpus_per_node=8))
    'torchrun --standalone --nproc-per-node 8 -m trajtune.launcher.cli train --config run.yaml'
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from ..data_builders.errors import TrajtuneError

CLI_MODULE = "trajtune.launcher.cli"
DEFAULT_PORT = 29500  # torch's and DeepSpeed's default master / rendezvous port


class Shell(str):
    """Shell text that `shell_line` leaves unquoted: a variable or command substitution the shell expands."""


MASTER_ADDR = Shell('"$MASTER_ADDR"')  # the first node's hostname, exported on every node by the user
NODE_RANK = Shell('"$NODE_RANK"')  # 0 on the first node, 1 on the next, ...
SLURM_FIRST_HOST = Shell('"$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"')
SLURM_JOB_ID = Shell('"$SLURM_JOB_ID"')
SLURM_NODE_ID = Shell('"$SLURM_NODEID"')  # per srun task: the node's index in the allocation


def shell_line(argv: Sequence[str]) -> str:
    """argv as one shell command line: arguments quoted as needed, `Shell` pieces as they are."""
    return " ".join(a if isinstance(a, Shell) else shlex.quote(str(a)) for a in argv)


def check_shape(nodes: int, gpus_per_node: int) -> int:
    """The world size nodes × gpus_per_node; TrajtuneError unless both are >= 1."""
    for name, value in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node)):
        if value < 1:
            raise TrajtuneError(f"{name} must be >= 1, got {value}")
    return nodes * gpus_per_node


def _endpoint(host: str, port: int) -> str:
    # `"$MASTER_ADDR":29500` is one shell word: a quoted expansion followed by plain text.
    return Shell(f"{host}:{port}") if isinstance(host, Shell) else f"{host}:{port}"


def _trajtune(train_args: Sequence[str]) -> list[str]:
    return [CLI_MODULE, "train", *train_args]


def deepspeed_command(train_args: Sequence[str], *, nodes: int, gpus_per_node: int, hostfile: str = "hostfile",
                      master_addr: str = MASTER_ADDR, master_port: int = DEFAULT_PORT,
                      node_rank: str | None = None) -> list[str]:
    """`deepspeed` for the shape. One node: `--num_gpus G`, run on that node. Several: with `--hostfile` (one
    `HOST slots=G` line per node, see `hostfile_text`); without `node_rank`, run once on the first node, which
    starts the others over ssh (pdsh); with it (e.g. NODE_RANK, or SLURM_NODE_ID under srun), run on every node
    with `--no_ssh`."""
    check_shape(nodes, gpus_per_node)
    if nodes == 1:
        return ["deepspeed", "--num_gpus", str(gpus_per_node), "--module", *_trajtune(train_args)]
    no_ssh = ["--no_ssh", "--node_rank", node_rank] if node_rank is not None else []
    return ["deepspeed", "--hostfile", hostfile, "--num_nodes", str(nodes), "--num_gpus", str(gpus_per_node),
            "--master_addr", master_addr, "--master_port", str(master_port), *no_ssh, "--module",
            *_trajtune(train_args)]


def torchrun_command(train_args: Sequence[str], *, nodes: int, gpus_per_node: int, rdzv_host: str | None = None,
                     port: int = DEFAULT_PORT, rdzv_id: str | None = None) -> list[str]:
    """`torchrun` for the shape, run on every node. rdzv_host None (one node only): `--standalone`; else a c10d
    rendezvous at rdzv_host:port (the first node), which every node's torchrun joins; `rdzv_id` tells jobs that
    share the endpoint apart (e.g. SLURM_JOB_ID)."""
    check_shape(nodes, gpus_per_node)
    if rdzv_host is None:
        if nodes > 1:
            raise ValueError("several nodes need a rendezvous host (rdzv_host)")
        return ["torchrun", "--standalone", "--nproc-per-node", str(gpus_per_node), "-m", *_trajtune(train_args)]
    job = ["--rdzv-id", rdzv_id] if rdzv_id is not None else []
    return ["torchrun", "--nnodes", str(nodes), "--nproc-per-node", str(gpus_per_node), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", _endpoint(rdzv_host, port), *job, "-m", *_trajtune(train_args)]


def srun_command(inner: Sequence[str], *, nodes: int, per_task_shell: bool = False) -> list[str]:
    """`srun` inside an allocation: one task per node running `inner` (a torchrun or deepspeed command).

    The batch script's shell expands `Shell` pieces of `inner` once, before srun starts; with per_task_shell,
    `inner` runs under `bash -c` in each task instead, so per-node values (SLURM_NODE_ID) expand on each node.
    `--kill-on-bad-exit=1`: a node whose launcher fails takes the others down at once, instead of leaving them
    waiting in a collective until the process-group timeout.
    """
    check_shape(nodes, 1)
    srun = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    return [*srun, "bash", "-c", shell_line(inner)] if per_task_shell else [*srun, *inner]


def hostfile_text(hosts: Sequence[str], gpus_per_node: int) -> str:
    """DeepSpeed's hostfile: one `HOST slots=G` line per node, the first host first (it is the master)."""
    return "".join(f"{host} slots={gpus_per_node}\n" for host in hosts)
