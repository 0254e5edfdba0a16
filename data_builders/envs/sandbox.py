"""Run one shell command in a bubblewrap sandbox: `run_sandboxed(command, workdir, limits) -> Result`.

What the command sees and may do (each pinned by tests/test_sandbox.py):
- Its own namespaces (`--unshare-all`): no network (a private net namespace: its own loopback, nothing else), its
  own pids, hostname, IPC; no nested user namespaces (`--disable-userns`).
- Files: `workdir` (bound at /workspace, the only writable host path), /usr and the /bin, /lib* links read-only, a
  minimal /etc (passwd, group, ld.so.cache, alternatives, ...), a fresh /proc, a read-only /dev holding only
  null/zero/full/random/urandom/tty, and a small private tmpfs /tmp. Nothing else of the host: no /root, no /home,
  no /work, no /etc/shadow.
- Limits: wall time (we kill it), RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE (file size), at most `pids`
  processes (a pids cgroup: RLIMIT_NPROC does not bind root, and for any other uid it counts every process of
  that uid on the machine, so parallel sandboxes would starve each other), and at most `output_bytes` read back
  (then it is killed: 1 GB of output costs nothing).
- As root, the command runs as `nobody` (65534), not as a root mapped into a user namespace: even a file that
  leaked into view keeps its host permissions. `--die-with-parent` and the pid namespace end every process of the
  sandbox when the call ends; `--new-session` keeps it off our terminal.

A `Sandbox` holds what calls share (its pids cgroup, the argument prefix) and runs one command at a time.
`check()` says why the sandbox cannot start on this machine (None when it can); `Sandbox()` raises
`SandboxUnavailable` with that reason: there is never a silent unsandboxed fallback.
"""

from __future__ import annotations

import itertools
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from ..errors import TrajtuneError

NOBODY = 65534  # the uid/gid a root host drops to before starting bwrap
INSIDE = "/workspace"  # where workdir appears inside the sandbox (the command's cwd and HOME)
# A minimal /etc: user names for `ls -l`, the loader cache (speed), Debian's alternatives (awk, editor links).
ETC = ("passwd", "group", "nsswitch.conf", "ld.so.cache", "localtime", "alternatives")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# The wrapper joins the cgroup and sets the rlimits, then execs bwrap: everything bwrap forks is inside both.
# `|| exit 125` because a command that cannot be contained must not run at all.
WRAPPER = ('echo $$ > "$1" && ulimit -St "$2" && ulimit -Ht "$3" && ulimit -v "$4" && ulimit -f "$5" || exit 125; '
           'shift 5; exec "$@"')
_names = itertools.count()


class SandboxUnavailable(TrajtuneError):
    """bubblewrap (or a pids cgroup) is not usable here; the message says why and how to fix it."""


@dataclass(frozen=True)
class Limits:
    """Per-call limits. Units are in the names."""

    wall_s: float = 5.0  # killed after this long (real time)
    cpu_s: int = 2  # RLIMIT_CPU per process: SIGXCPU at cpu_s, SIGKILL a second later
    memory_bytes: int = 512 << 20  # RLIMIT_AS per process (address space; allocations beyond fail)
    file_bytes: int = 16 << 20  # RLIMIT_FSIZE: a write beyond it raises SIGXFSZ
    output_bytes: int = 64 << 10  # stdout+stderr read back; more and the command is killed
    pids: int = 64  # processes and threads alive at once (pids.max of the call's cgroup)
    tmp_bytes: int = 16 << 20  # size of the private /tmp


@dataclass
class Result:
    """What a call produced. `limit` names the limit that ended it ("timeout", "output", "cpu", "file_size"), or
    is None when the command exited on its own (any exit code)."""

    exit_code: int | None  # None when we killed it
    output: str  # stdout and stderr interleaved, UTF-8 (bad bytes replaced), at most output_bytes of it
    limit: str | None = None
    elapsed_s: float = 0.0


# ---------------------------------------------------------------------------------------------------------
# Setting up: binaries, the pids cgroup, the fixed part of the bwrap command line


def pids_cgroup_parent() -> Path | None:
    """Where per-sandbox pids cgroups are made: $TRAJTUNE_PIDS_CGROUP, else cgroup v1's pids hierarchy, else (v2)
    our own cgroup when it delegates the pids controller to children; None when there is none."""
    if os.environ.get("TRAJTUNE_PIDS_CGROUP"):
        return Path(os.environ["TRAJTUNE_PIDS_CGROUP"])
    v1 = Path("/sys/fs/cgroup/pids")
    if (v1 / "cgroup.procs").exists():
        return v1
    try:
        own = next(line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
    except (OSError, StopIteration):
        return None
    v2 = Path("/sys/fs/cgroup") / own.strip().lstrip("/")
    try:
        return v2 if "pids" in (v2 / "cgroup.subtree_control").read_text().split() else None
    except OSError:
        return None


def make_pids_cgroup(parent: Path, pids: int) -> Path:
    """A fresh child cgroup of `parent` limited to `pids` tasks; SandboxUnavailable saying why not."""
    path = parent / f"trajtune-sandbox-{os.getpid()}-{next(_names)}"
    try:
        path.mkdir()
        (path / "pids.max").write_text(str(pids))
    except OSError as e:
        if path.exists():
            remove_cgroup(path)
        raise SandboxUnavailable(
            f"cannot make a pids cgroup under {parent} ({e.strerror or e}): the sandbox needs one to bound the "
            "number of processes (a fork bomb). Run as root on a cgroup v1 host, or point TRAJTUNE_PIDS_CGROUP at "
            "a writable cgroup with the pids controller (cgroup v2: one delegated to you, e.g. "
            "`systemd-run --user --scope -p Delegate=yes`)") from None
    return path


def cgroup_pids(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def kill_cgroup(path: Path, deadline_s: float = 2.0) -> None:
    """SIGKILL everything in the cgroup and wait until it is empty (killed tasks leave it when reaped)."""
    end = time.monotonic() + deadline_s
    while (pids := cgroup_pids(path)) and time.monotonic() < end:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.002)


def remove_cgroup(path: Path) -> None:
    kill_cgroup(path)
    try:
        path.rmdir()
    except OSError:
        pass  # still busy: a stale empty cgroup is harmless, and a leak is better than a crash at exit


def fixed_args(bwrap: str, limits: Limits) -> list[str]:
    """The bwrap command line up to the workdir bind: namespaces, system dirs, /etc, /dev, /proc, /tmp."""
    args = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--as-pid-1", "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / top
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for name in ETC:
        if os.path.lexists(f"/etc/{name}"):
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    # Our own small read-only /dev: bwrap's --dev is a writable tmpfs as large as half the host's memory.
    args += ["--size", "65536", "--tmpfs", "/dev"]
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            args += ["--dev-bind", f"/dev/{name}", f"/dev/{name}"]
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        args += ["--symlink", target, f"/dev/{name}"]
    args += ["--remount-ro", "/dev", "--proc", "/proc", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
             "--clearenv", "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", INSIDE,
             "--setenv", "LC_ALL", "C.UTF-8", "--setenv", "TMPDIR", "/tmp", "--setenv", "TERM", "dumb"]
    return args


def read_capped(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, str | None]:
    """Read `proc`'s stdout until EOF, the monotonic `deadline` ("timeout") or more than `cap` bytes ("output");
    returns at most `cap` bytes and which limit stopped it (None for EOF)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    chunks: list[bytes] = []
    size = 0
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return b"".join(chunks), "timeout"
            if not sel.select(left):
                continue
            data = os.read(fd, 1 << 16)
            if not data:
                return b"".join(chunks), None  # every writer closed: the sandbox is gone
            chunks.append(data)
            size += len(data)
            if size > cap:
                return b"".join(chunks)[:cap], "output"


def check(bwrap: str = "bwrap") -> str | None:
    """Why the sandbox cannot start here (a sentence with the fix), or None when it can. Runs one real call."""
    try:
        Sandbox(bwrap=bwrap).close()
    except SandboxUnavailable as e:
        return str(e)
    return None


# ---------------------------------------------------------------------------------------------------------
# The sandbox


class Sandbox:
    """Runs commands in bubblewrap under `limits`, one at a time. Raises SandboxUnavailable when it cannot start
    (no bwrap, no user namespaces, no pids cgroup): checked by a real call at construction.

    >>> with Sandbox() as box:
    ...     box.adopt(task_dir)  # as root: the command runs as uid 65534
    ...     box.run("echo hi > x && cat x", task_dir).output
    'hi\\n'
    """

    def __init__(self, limits: Limits | None = None, bwrap: str = "bwrap", cgroup_parent: str | Path | None = None):
        self.limits = limits or Limits()
        found = shutil.which(bwrap)
        if found is None:
            raise SandboxUnavailable(f"bubblewrap ({bwrap!r}) is not installed: the shell sandbox needs it "
                                     "(Debian/Ubuntu: `apt-get install -y bubblewrap`)")
        if "--disable-userns" not in subprocess.run([found, "--help"], capture_output=True, text=True).stdout:
            raise SandboxUnavailable(f"{found} is too old (it lacks --disable-userns; bubblewrap >= 0.8 needed)")
        parent = Path(cgroup_parent) if cgroup_parent is not None else pids_cgroup_parent()
        if parent is None:
            raise SandboxUnavailable("no pids cgroup found to bound the number of processes: set "
                                     "TRAJTUNE_PIDS_CGROUP to a writable cgroup with the pids controller")
        self.cgroup = make_pids_cgroup(parent, self.limits.pids)
        self._finalizer = weakref.finalize(self, remove_cgroup, self.cgroup)
        self.as_root = os.geteuid() == 0
        drop = ([shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
                if self.as_root else [])
        lim = self.limits
        self.prefix = ["/bin/sh", "-c", WRAPPER, "sh", str(self.cgroup / "cgroup.procs"), str(lim.cpu_s),
                       str(lim.cpu_s + 1), str(lim.memory_bytes >> 10), str(max(1, lim.file_bytes >> 9)),
                       *drop, *fixed_args(found, lim)]
        self._probe()

    def _probe(self) -> None:
        probe = Path(tempfile.mkdtemp(prefix="trajtune-sandbox-probe-"))
        try:
            self.adopt(probe)
            result = self.run("echo ok", probe)
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        if result.exit_code != 0 or result.output != "ok\n":
            self.close()
            raise SandboxUnavailable(f"bubblewrap cannot start a sandbox here (exit {result.exit_code}): "
                                     f"{result.output.strip()[:500]} -- it needs unprivileged user namespaces "
                                     "(sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0) "
                                     f"and, as root, a TMPDIR that uid {NOBODY} can reach")

    def adopt(self, path: str | Path) -> None:
        """Give `path` (recursively) to the sandbox's uid, so the command may write there (a no-op unless root)."""
        if not self.as_root:
            return
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), NOBODY, NOBODY, follow_symlinks=False)

    def run(self, command: str, workdir: str | Path) -> Result:
        """Run `command` with bash in `workdir` (bound at /workspace, its cwd). Never raises for what the command
        does; every limit is reported in `Result.limit`."""
        lim = self.limits
        # The root (bwrap's tmpfs) goes read-only last, once every mount point exists: else /etc and / itself would
        # be writable, in memory, with no size limit. sh is the namespace's pid 1 (an init ignores SIGXCPU and
        # SIGXFSZ; bash, its child, dies of them), and `; exit $?` stops sh from exec'ing bash in its place.
        argv = [*self.prefix, "--bind", str(Path(workdir).resolve()), INSIDE, "--remount-ro", "/", "--chdir", INSIDE,
                "/bin/sh", "-c", '/bin/bash -c "$1"; exit $?', "sh", command]
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            output, limit = read_capped(proc, start + lim.wall_s, lim.output_bytes)
            if limit is None:  # its output closed (`exec >&-`), yet it may still run
                try:
                    proc.wait(timeout=max(0.0, start + lim.wall_s - time.monotonic()))
                except subprocess.TimeoutExpired:
                    limit = "timeout"
        finally:
            if proc.poll() is None:
                self._stop(proc)
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
            kill_cgroup(self.cgroup)  # anything that outlived bwrap (the pid namespace says none can; be sure)
        code = proc.returncode
        if limit is None:
            # bash reports a child killed by signal N as 128+N, and so does sh for bash; bwrap passes it on.
            limit = {128 + signal.SIGXCPU: "cpu", 128 + signal.SIGXFSZ: "file_size"}.get(code)
        killed = limit in ("timeout", "output") or code < 0
        return Result(exit_code=None if killed else code, output=output.decode("utf-8", errors="replace"),
                      limit=limit, elapsed_s=time.monotonic() - start)

    def _stop(self, proc: subprocess.Popen) -> None:
        """Kill the sandbox from the inside out: its processes first, so bwrap (`proc`) sees its child die and reaps
        it. Killing bwrap first would orphan the namespace's pid 1 to the host's init, whose zombie keeps counting
        against our pids.max until that init reaps it (some never do)."""
        end = time.monotonic() + 1.0
        while (inside := [p for p in cgroup_pids(self.cgroup) if p != proc.pid]) and time.monotonic() < end:
            for pid in inside:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=0.05)
                return
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Remove the pids cgroup (killing anything left in it)."""
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_sandboxed(command: str, workdir: str | Path, limits: Limits | None = None) -> Result:
    """One command in a one-off Sandbox (eval and serve reuse this; a loop of calls should keep a Sandbox).
    As root, `workdir` is first given to uid 65534 (`Sandbox.adopt`), and its parents must let that uid through."""
    with Sandbox(limits) as box:
        box.adopt(workdir)
        return box.run(command, workdir)


def measure_overhead(n: int = 50) -> dict[str, float]:
    """Mean wall milliseconds per call of `true` in a kept Sandbox vs a plain `subprocess.run(['sh', '-c', 'true'])`
    (bench/synth.py prints these): `{"sandbox_ms", "plain_ms", "overhead_ms", "calls"}`."""
    workdir = Path(tempfile.mkdtemp(prefix="trajtune-sandbox-bench-"))
    try:
        with Sandbox() as box:
            box.adopt(workdir)
            box.run("true", workdir)  # warm the page cache
            start = time.perf_counter()
            for _ in range(n):
                box.run("true", workdir)
            sandbox_ms = (time.perf_counter() - start) * 1000 / n
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run(["sh", "-c", "true"], check=True)
    plain_ms = (time.perf_counter() - start) * 1000 / n
    return {"sandbox_ms": sandbox_ms, "plain_ms": plain_ms, "overhead_ms": sandbox_ms - plain_ms, "calls": n}
