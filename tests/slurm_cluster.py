"""A real Slurm on localhost for the tests: munged + slurmctld + two slurmd (nodes n1, n2) in a temporary folder.

Debian's slurm-wlm and munge (`.ci/run` installs them) run as root with ProctrackType=proctrack/linuxproc and
TaskPlugin=task/none; both nodes are this host (`slurmd -N NAME`, each on its own port) with its CPUs, and two
fake GPUs each (gres files /dev/null and /dev/zero), so the templates' --gpus-per-node requests run as written and
the ranks train on CPU. Every daemon runs in the foreground as a child of the test process, on free ports, with
its own munge socket and key: nothing outside the folder is touched, and `stop()` leaves no process behind.
`LocalSlurm.start` returns None with the reason when the daemons cannot start here (then the tests skip).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "srun")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_hardware() -> str:
    """The CPU layout `slurmd -C` reports for this host (its NodeName line without the name and memory)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    return " ".join(m.group(0) for k in keys if (m := re.search(rf"\b{k}=\d+", out)))


class LocalSlurm:
    """A running local cluster: `env` is the environment for Slurm's client commands, `nodes` the idle nodes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.logs: list = []
        self.nodes: list[str] = []
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}

    @classmethod
    def start(cls, root: Path) -> tuple[LocalSlurm | None, str]:
        """(cluster, "") once every node is idle; (None, why) when Slurm cannot run here."""
        missing = [d for d in DAEMONS if shutil.which(d) is None]
        if missing:
            return None, f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
        if os.geteuid() != 0:
            return None, "the local Slurm runs its daemons as root (SlurmUser=root); these tests run as another user"
        cluster = cls(root)
        try:
            why = cluster._launch()
        except (OSError, subprocess.SubprocessError) as e:
            why = f"{type(e).__name__}: {e}"
        if why:
            logs = "; ".join(f"{p.name}: {p.read_text()[-400:]}" for p in sorted(root.glob("*.log")))
            cluster.stop()
            return None, f"the local Slurm did not start: {why} ({logs})"
        return cluster, ""

    def _launch(self) -> str:
        root = self.root
        for d in ("munge", "state", "spool"):
            (root / d).mkdir(mode=0o700, parents=True, exist_ok=True)
        key = root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        sock = root / "munge" / "munge.sock"
        self._spawn(["munged", "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
                     f"--log-file={root / 'munged.log'}", f"--pid-file={root / 'munge' / 'munged.pid'}",
                     f"--seed-file={root / 'munge' / 'seed'}"])
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        else:
            return "munged made no socket"
        host = socket.gethostname()
        hardware = _node_hardware()
        ports = {"n1": _free_port(), "n2": _free_port()}
        nodes = "\n".join(f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={p} {hardware} RealMemory=1000 "
                          "Gres=gpu:2 State=UNKNOWN" for n, p in ports.items())
        (root / "gres.conf").write_text("Name=gpu File=/dev/null\nName=gpu File=/dev/zero\n")
        (root / "slurm.conf").write_text(f"""\
ClusterName=trajtune-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}/%n
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd-%n.pid'}
SlurmctldLogFile={root / 'slurmctld.log'}
SlurmdLogFile={root / 'slurmd-%n.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
GresTypes=gpu
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# the ranks' checkpoint after a SIGTERM (scontrol requeue) must fit in KillWait; finished jobs stay visible
KillWait=30
MinJobAge=3600
SlurmdTimeout=60
{nodes}
PartitionName=debug Nodes={','.join(ports)} Default=YES MaxTime=INFINITE State=UP
""")
        conf = ["-f", str(root / "slurm.conf")]
        self._spawn(["slurmctld", "-D", "-i", *conf])
        for name in ports:
            self._spawn(["slurmd", "-D", "-N", name, *conf])
        deadline = time.time() + 60
        while time.time() < deadline:
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead:
                return f"{', '.join(dead)} exited"
            states = self.client(["sinfo", "-h", "-N", "-o", "%N %T"], check=False).stdout.split("\n")
            self.nodes = sorted(line.split()[0] for line in states if line.endswith(" idle"))
            if len(self.nodes) == len(ports):
                return ""
            time.sleep(0.5)
        # One slurmd per host is all some builds allow: the tests then run their ranks as tasks of one node.
        return "" if self.nodes else "no node became idle within 60 s"

    def _spawn(self, cmd: list[str]) -> None:
        log = open(self.root / f"{cmd[0]}-{len(self.procs)}.out", "w")
        self.logs.append(log)
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                           start_new_session=True))

    def client(self, cmd: list[str], check: bool = True, timeout: int = 60) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sbatch, scontrol, ...) against this cluster."""
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr}{proc.stdout}")
        return proc

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as {key: value} (JobState, Restarts, ExitCode, ...)."""
        text = self.client(["scontrol", "show", "job", "-o", job_id]).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait_for(self, job_id: str, states: tuple[str, ...], timeout: float = 240, release: bool = True) -> dict:
        """Poll the job until its JobState is one of `states` (AssertionError at another final state). With
        `release`, a requeued job waiting out Slurm's requeue delay (Reason=BeginTime, ~2 minutes) is made eligible
        after 2 s: the nodes revoke the last start's credential by the second, and a start within that second
        fails ("Job credential revoked")."""
        deadline = time.time() + timeout
        pending_since = None
        while True:
            info = self.job(job_id)
            state = info.get("JobState")
            if state in states:
                return info
            assert state not in FINAL, f"job {job_id} ended {state}, not {states}: {info}"
            if release and state == "PENDING" and info.get("Reason") == "BeginTime":
                pending_since = pending_since or time.time()
                if time.time() - pending_since > 2:
                    self.client(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=False)
            assert time.time() < deadline, f"job {job_id} is {state} after {timeout} s, not {states}"
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel every job, stop the daemons (TERM, then KILL) and reap them."""
        if any(p.poll() is None for p in self.procs):
            self.client(["scancel", "--user", "root"], check=False)
            time.sleep(1)
        for proc in reversed(self.procs):  # slurmd before slurmctld before munged
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait()
        for log in self.logs:
            log.close()
