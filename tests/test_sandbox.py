"""The shell sandbox holds against attacks made through the real tool call (`env.step` with a bash call).

Each attack is contained and answered with an observation saying so; the host is unchanged; the next call works.
The attacks run under an outer guard: the sandbox's pids cgroup is made inside a guard cgroup (pids.max 200, so a
fork bomb that escaped its own limit still could not take the machine down) and every test has a SIGALRM deadline.
Skipped, with the reason, where bubblewrap cannot start (CI installs it: .ci/run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from trajtune.data_builders.envs import make_env
from trajtune.data_builders.envs.sandbox import (
    Limits,
    cgroup_pids,
    check,
    make_pids_cgroup,
    pids_cgroup_parent,
    remove_cgroup,
    run_sandboxed,
)
from trajtune.data_builders.errors import TrajtuneError

REPO = Path(__file__).resolve().parents[1]
REASON = check()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"sandbox unavailable: {REASON}")
LIMITS = {"wall_s": 2, "cpu_s": 1, "memory_mb": 256, "file_mb": 1, "output_kb": 64, "pids": 32}


@pytest.fixture(scope="module")
def guard():
    parent = pids_cgroup_parent()
    assert parent is not None
    path = make_pids_cgroup(parent, 200)
    yield path
    remove_cgroup(path)


@pytest.fixture(scope="module")
def env(guard):
    env = make_env("shell", per_family=1, cgroup_parent=str(guard), **LIMITS)
    env.reset(env.tasks()[0])
    yield env
    env.close()


@pytest.fixture(autouse=True)
def deadline():
    """A containment failure must fail the test, not hang the run."""
    def expire(signum, frame):
        raise TimeoutError("the sandbox call did not return in 30 s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def bash(env, command: str) -> str:
    return env.step({"id": "c", "type": "function", "function": {"name": "bash", "arguments": {"command": command}}})[
        "content"]


def error_type(content: str) -> str | None:
    try:
        return json.loads(content)["error"]["type"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def assert_next_call_works(env) -> None:
    assert bash(env, "echo ok") == "ok\n"
    assert cgroup_pids(env.sandbox.cgroup) == []  # nothing of the attack is left running,
    assert (env.sandbox.cgroup / "pids.current").read_text().strip() == "0"  # nor a zombie holding a pid


def test_writing_outside_the_task_directory_fails_and_the_host_is_unchanged(env):
    targets = ["/usr/pwned", "/etc/pwned", "/pwned", "/usr/bin/pwned", f"{REPO}/pwned", "/dev/pwned"]
    out = bash(env, "; ".join(f"echo x > {t}" for t in targets) + "; mkdir /work; echo done")
    for t in targets:
        assert re.search(f"{t}: (Read-only file system|No such file or directory)", out), (t, out)
    assert re.search("mkdir: cannot create directory ./work.: Read-only file system", out)
    assert not any(os.path.lexists(t) for t in targets)
    assert bash(env, "echo inside > mine.txt && cat mine.txt") == "inside\n"
    assert (env.workdir / "mine.txt").read_text() == "inside\n"  # the task directory is the one writable place
    assert_next_call_works(env)


def test_host_files_are_not_visible(env):
    out = bash(env, f"cat {REPO}/README.md /root/.bashrc /etc/shadow; ls /work /root /home")
    assert out.count("No such file or directory") == 6 and "trajtune" not in out
    assert set(bash(env, "ls /").split()) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin",
                                              "tmp", "usr", "workspace"}
    assert set(bash(env, "ls /etc").split()) <= {"passwd", "group", "nsswitch.conf", "ld.so.cache", "localtime",
                                                 "alternatives"}
    assert_next_call_works(env)


def test_symlinks_lead_nowhere_inside_and_the_reward_never_follows_them(env, tmp_path):
    out = bash(env, f"ln -sf /etc/shadow s1 && ln -sfn {REPO} s2 && cat s1; ls s2/")
    assert out.count("No such file or directory") == 2
    # A state task checked by reading files: planting a link to a host file with the expected text must not pass.
    task = next(t for t in env.tasks() if t["meta"]["family"] == "sort_lines")
    env.reset(task)
    host_file = tmp_path / "expected.txt"
    host_file.write_text(task["gold"]["files"]["sorted.txt"])
    host_file.chmod(0o644)
    bash(env, f"ln -s {host_file} sorted.txt")
    assert os.path.islink(env.workdir / "sorted.txt")
    assert env.reward() == 0.0
    bash(env, "rm sorted.txt && sort names.txt > sorted.txt")
    assert env.reward() == 1.0
    assert_next_call_works(env)


def test_no_network(env):
    with socket.socket() as server:  # a service of the host, on its loopback
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        out = bash(env, "exec 3<>/dev/tcp/1.1.1.1/53 || echo BLOCKED; "
                        f"exec 3<>/dev/tcp/127.0.0.1/{port} || echo BLOCKED")
    assert out.count("BLOCKED") == 2
    assert "1.1.1.1/53: Network is unreachable" in out and f"127.0.0.1/{port}: Connection refused" in out
    assert_next_call_works(env)


def test_a_fork_bomb_is_bounded_by_the_pids_cgroup(env):
    def refused_forks() -> int:  # pids.events: "max N", N = forks refused at pids.max
        return int((env.sandbox.cgroup / "pids.events").read_text().split()[1])

    before = refused_forks()
    out = bash(env, ":(){ :|:& };:; sleep 10")
    assert error_type(out) == "timeout"
    assert refused_forks() > before  # the limit bound (a bomb outside our cgroup would leave it untouched)
    assert "Resource temporarily unavailable" in out
    assert_next_call_works(env)


def test_an_endless_loop_stops_at_the_cpu_limit_and_a_sleep_at_the_wall_limit(env):
    assert error_type(bash(env, "while :; do :; done")) == "cpu_limit"
    assert error_type(bash(env, "exec >&- 2>&-; sleep 100")) == "timeout"  # closing its output does not end the call
    assert_next_call_works(env)


def test_a_gigabyte_of_output_is_cut_at_the_cap(env):
    out = bash(env, "head -c 1G /dev/zero | tr '\\0' y")
    assert error_type(out) == "output_limit"
    assert len(out) < 4000  # the observation carries a short tail, not the output
    assert_next_call_works(env)


def test_a_memory_hog_gets_no_memory(env):
    out = bash(env, "python3 -c 'x = bytearray(1 << 30); print(\"allocated\")'")
    assert "MemoryError" in out and "allocated" not in out and out.endswith("[exit code 1]")
    assert_next_call_works(env)


def test_a_big_file_stops_at_the_file_size_limit(env):
    out = bash(env, "head -c 5M /dev/zero > big.bin")
    assert error_type(out) == "file_size_limit"
    assert (env.workdir / "big.bin").stat().st_size <= LIMITS["file_mb"] << 20
    assert_next_call_works(env)


def test_killing_the_parent_or_everything_leaves_the_host_running(env):
    me = os.getpid()
    out = bash(env, "kill -9 $PPID; kill -9 1; kill -9 -1; echo still here; kill -9 0")
    assert "still here" in out
    os.kill(me, 0)  # we are alive
    assert_next_call_works(env)


def test_background_processes_do_not_outlive_the_call(env):
    bash(env, "sleep 300 & setsid sleep 301 & nohup sleep 302 >/dev/null 2>&1 & echo started")
    assert cgroup_pids(env.sandbox.cgroup) == []
    # Killed processes can take a moment to leave the process table on a loaded machine; an escaped one would
    # live for 300 s, far past this wait.
    for _ in range(50):
        ps = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout
        alive = [line for line in ps.splitlines() if line.split(None, 1)[-1].strip() in ("sleep 300", "sleep 301",
                                                                                         "sleep 302")
                 and not line.startswith("Z")]
        if not alive:
            break
        time.sleep(0.1)
    assert alive == []
    assert_next_call_works(env)


def test_no_nested_user_namespaces(env):
    out = bash(env, "unshare -U true || echo refused")
    assert "refused" in out
    assert_next_call_works(env)


def test_run_sandboxed_reads_at_most_the_cap(guard):
    workdir = Path(tempfile.mkdtemp(prefix="trajtune-test-"))
    try:
        done = run_sandboxed("echo hi > f && cat f && echo oops >&2; exit 4", workdir)
        assert (done.exit_code, done.output, done.limit) == (4, "hi\noops\n", None)
        assert (workdir / "f").read_text() == "hi\n"
        capped = run_sandboxed("yes", workdir, Limits(output_bytes=1000))
        assert (capped.exit_code, capped.limit, capped.output) == (None, "output", "y\n" * 500)
    finally:
        shutil.rmtree(workdir)


def test_an_unavailable_sandbox_is_refused_with_the_reason(guard):
    env = make_env("shell", per_family=1, bwrap="/nonexistent/bwrap")
    with pytest.raises(TrajtuneError, match="sandbox cannot start.*bubblewrap.*not installed.*apt-get install"):
        env.reset(env.tasks()[0])
    env = make_env("shell", per_family=1, cgroup_parent="/nonexistent/cgroup")
    with pytest.raises(TrajtuneError, match="cannot make a pids cgroup under /nonexistent/cgroup.*TRAJTUNE_PIDS"):
        env.reset(env.tasks()[0])
