"""A rank that cannot join the process group fails within `timeout_minutes` with an error naming its rank, host and
the rendezvous environment it saw, in its console and in logs/rank_K.log, instead of hanging.

Real `trajtune train` processes (engine=deepspeed, gloo on CPU), started by hand with the env:// variables a
launcher sets (global batch 12: a multiple of both world sizes): a rank whose peer never starts, and two ranks that disagree on WORLD_SIZE (rank 0 forms the group
but its first collective times out; rank 1 waits for a rank 2 that does not exist). All three run at once.
"""

from __future__ import annotations

import socket
import subprocess

import pytest
from test_train import make_run_inputs
from test_train_distributed import TRAJTUNE, env, free_port, run_args

pytestmark = pytest.mark.slow

CHECKS = ("Every rank must see the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE and its own RANK",
          "all WORLD_SIZE ranks were started", "firewall", "NCCL_SOCKET_IFNAME", "raise timeout_minutes")


def start(data, model, out, port: int, rank: int, world_size: int) -> subprocess.Popen:
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
                  "WORLD_SIZE": str(world_size)}
    return subprocess.Popen([TRAJTUNE, "train", *run_args(data, model, out, timeout_minutes=0.05, global_batch_size=12)],
                            env={**env(), **rendezvous}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_rank_that_cannot_join_fails_naming_its_rank_host_and_environment(tmp_path):
    data, model = make_run_inputs(tmp_path, n_packs=8)
    lone_port, pair_port = free_port(), free_port()
    procs = {"lone": start(data, model, tmp_path / "lone", lone_port, rank=0, world_size=2),  # rank 1 never starts
             "pair0": start(data, model, tmp_path / "pair", pair_port, rank=0, world_size=2),
             "pair1": start(data, model, tmp_path / "pair", pair_port, rank=1, world_size=3)}
    try:
        errs = {name: proc.communicate(timeout=240)[1] for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    host = socket.gethostname()
    seen = {"lone": (0, lone_port, 2), "pair0": (0, pair_port, 2), "pair1": (1, pair_port, 3)}
    for name, (rank, port, world_size) in seen.items():
        err = errs[name]
        assert procs[name].returncode == 2, (name, err[-3000:])
        message = next(line for line in err.splitlines() if line.startswith("trajtune train: error: "))
        assert f"rank {rank} on host {host} could not join the process group (timeout_minutes=0.05): " in message
        assert (f"This rank saw MASTER_ADDR=127.0.0.1 MASTER_PORT={port} WORLD_SIZE={world_size} RANK={rank} "
                f"LOCAL_RANK={rank}.") in message
        assert all(check in message for check in CHECKS), message
        assert "Traceback" not in err
        out = tmp_path / ("lone" if name == "lone" else "pair")
        log = (out / "logs" / f"rank_{rank}.log").read_text()
        assert f"rank {rank} of {world_size} on host {host}" in log and f"MASTER_PORT={port}" in log
        assert "ERROR trajtune.rank_log: error: " + message.removeprefix("trajtune train: error: ") in log
    assert "DistStoreError: Timed out after" in errs["lone"] and "1/2 clients joined" in errs["lone"]
