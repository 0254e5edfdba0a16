"""`trajtune slurm`: submit a trajtune command as a Slurm job from a template, and see how a run's jobs stand.

    trajtune slurm submit --template preemptible --nodes 2 --gpus-per-node 8 -- train --config run.yaml lr=1e-5
    trajtune slurm submit --template array --array 0-7 --run-dir runs/synth -- synth --shard {index}/{count}
    trajtune slurm status runs/agent-sft

`submit` renders slurm/<template>.sbatch into RUN_DIR/slurm/ (the script is kept there: it is what ran), with
the #SBATCH lines for the shape and the command baked in, and calls `sbatch`. RUN_DIR is a train command's
output_dir, else --run-dir. A train command is checked first (config keys, and that the global batch tiles
nodes × GPUs), so a job never waits in the queue to fail at its first line; a run dir whose job is still
pending or running is refused (two jobs would write the same checkpoints).
RUN_DIR/slurm/ then holds: <template>.sbatch, jobs.log (one line per submit: job id, template, time),
events.log (a line per start, signal, requeue and end, written by the script), slurm-<job>.out, pids/, hostfile.
`status` reads those, asks squeue / scontrol / sacct (whichever answer) for each job's state and restarts, and
shows the last step, the checkpoints, the last lines of each rank's log (logs/rank_K.log) and whether the
preemption signal's lead covers a step + a checkpoint (logs/timing.json).
No torch import: the train config is read with the typed loader only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from ..data_builders.errors import TrajtuneError

TEMPLATES = ("single_node", "multi_node", "preemptible", "array")
TRAIN_TEMPLATES = ("single_node", "multi_node", "preemptible")
TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "slurm"
ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("submit", formatter_class=parser.formatter_class,
                       help="Render a template into the run directory and sbatch it.",
                       description="Render slurm/<template>.sbatch into RUN_DIR/slurm/ and submit it with sbatch. "
                                   "The trajtune command follows `--`.")
    # Shape
    p.add_argument("--template", choices=TEMPLATES,
                   help="single_node (deepspeed), multi_node (srun + torchrun or deepspeed per node), preemptible "
                        "(checkpoint on SIGUSR1, requeue, resume) or array (one task per index) (default: "
                        "single_node for one node, multi_node for more).")
    p.add_argument("--nodes", type=int, default=1, help="Nodes.")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node, one rank each (required for train templates).")
    p.add_argument("--array", help="Array indices for --template array, e.g. 0-7 or 0-15%%4.")
    p.add_argument("--launcher", choices=("torchrun", "deepspeed"),
                   help="Per-node launcher of multi_node / preemptible (default: torchrun).")
    # Preemption
    p.add_argument("--signal-lead", type=int,
                   help="preemptible: seconds before the time limit that Slurm sends SIGUSR1; must cover a step + a "
                        "checkpoint save (default: 300).")
    p.add_argument("--max-requeues", type=int,
                   help="preemptible: stop requeueing once SLURM_RESTART_COUNT reaches this (default: 5).")
    # Cluster
    p.add_argument("--partition", help="Slurm partition (#SBATCH --partition).")
    p.add_argument("--account", help="Slurm account (#SBATCH --account).")
    p.add_argument("--time", help="Time limit, e.g. 24:00:00 (default: the template's).")
    p.add_argument("--run-dir", help="Where the job's files go (default for train: its output_dir; required else).")
    p.add_argument("--dry-run", action="store_true",
                   help="Render the script and print the sbatch line; submit nothing.")
    p.add_argument("job_command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                   help="The trajtune command to run, e.g. -- train --config run.yaml key=value.")
    s = sub.add_parser("status", formatter_class=parser.formatter_class,
                       help="Jobs, state, last step, checkpoints and rank logs of a run directory.",
                       description="Show a run directory's Slurm jobs (with requeues), their state, the last step, "
                                   "the checkpoints and the last lines of each rank's log.")
    s.add_argument("run_dir", metavar="RUN_DIR", help="The run directory (a train run's output_dir, or --run-dir).")
    s.add_argument("--lines", type=int, default=3, help="Last lines shown of each rank's log.")


def run(args: argparse.Namespace) -> int:
    return submit(args) if args.action == "submit" else status(Path(args.run_dir), args.lines)


# --- submit ---

def render(template: str, directives: dict[str, str | None], knobs: dict[str, str]) -> str:
    """The template's text with `#SBATCH --NAME=VALUE` set for each directive (enabling a `##SBATCH` line, or added
    after the last directive; a None value leaves a valueless flag such as --requeue), and each knob's `NAME=` line
    at the top replaced by `NAME=VALUE` (VALUE is shell text)."""
    lines = template.splitlines()
    for name, value in directives.items():
        line = f"#SBATCH --{name}" + ("" if value is None else f"={value}")
        pattern = re.compile(rf"^#{{1,2}}SBATCH --{re.escape(name)}(=|\s|$)")
        found = [i for i, text in enumerate(lines) if pattern.match(text)]
        if found:
            lines[found[0]] = line
        else:
            last = max(i for i, text in enumerate(lines) if re.match(r"^#{1,2}SBATCH ", text))
            lines.insert(last + 1, line)
    for name, value in knobs.items():
        found = [i for i, text in enumerate(lines) if text.startswith(f"{name}=")]
        if not found:
            raise ValueError(f"template has no {name}= knob")
        lines[found[0]] = f"{name}={value}  # set by trajtune slurm submit"
    return "\n".join(lines) + "\n"


def _command(raw: list[str]) -> list[str]:
    command = raw[1:] if raw[:1] == ["--"] else raw
    from .cli import COMMANDS

    if not command:
        raise TrajtuneError("no command to submit: put the trajtune command after `--`, e.g. "
                            "trajtune slurm submit --gpus-per-node 8 -- train --config run.yaml")
    if command[0] not in COMMANDS or command[0] == "slurm":
        raise TrajtuneError(f"{command[0]!r} is not a trajtune command to run in a job; one of: "
                            f"{', '.join(c for c in COMMANDS if c != 'slurm')} (after `--`, without `trajtune`)")
    return command


def _train_output_dir(command: list[str], world_size: int) -> Path:
    """A train command's output_dir, after checking its config (keys, values, batch tiling for world_size)."""
    from ..trainer.config import TrainConfig
    from .cli import make_parser
    from .config import load_config

    parser, _ = make_parser(command)
    try:
        parsed = parser.parse_args(command)
    except SystemExit:
        raise TrajtuneError(f"the train command after `--` does not parse: {shlex.join(command)}") from None
    cfg = load_config(TrainConfig, parsed.config, parsed.overrides)
    cfg.check()
    cfg.accumulation_steps(world_size)  # a global batch that nodes × GPUs cannot tile fails now, not in the queue
    return Path(cfg.output_dir)


def _choose_template(args: argparse.Namespace, is_train: bool) -> str:
    template = args.template or ("single_node" if args.nodes == 1 else "multi_node")
    if args.nodes < 1:
        raise TrajtuneError(f"--nodes must be >= 1, got {args.nodes}")
    if template == "single_node" and args.nodes > 1:
        raise TrajtuneError(f"--template single_node runs on one node, not {args.nodes}; use --template multi_node "
                            "(or preemptible)")
    if (template == "array") != (args.array is not None):
        raise TrajtuneError("--array goes with --template array (and it needs --array, e.g. 0-7)")
    if template in TRAIN_TEMPLATES:
        if not is_train:
            raise TrajtuneError(f"--template {template} launches training ranks; run other commands with "
                                "--template array (one task per index)")
        if args.gpus_per_node is None or args.gpus_per_node < 1:
            raise TrajtuneError("give --gpus-per-node G (G >= 1): ranks per node, one per GPU")
    elif is_train:
        raise TrajtuneError("--template array runs one process per task; train with single_node, multi_node or "
                            "preemptible")
    if template not in ("multi_node", "preemptible") and args.launcher:
        raise TrajtuneError("--launcher picks the per-node launcher of multi_node / preemptible")
    if template != "preemptible" and (args.signal_lead is not None or args.max_requeues is not None):
        raise TrajtuneError("--signal-lead and --max-requeues go with --template preemptible")
    for name in ("signal_lead", "max_requeues"):
        value = getattr(args, name)
        if value is not None and value < (1 if name == "signal_lead" else 0):
            raise TrajtuneError(f"--{name.replace('_', '-')} must be >= {1 if name == 'signal_lead' else 0}, "
                                f"got {value}")
    return template


def submit(args: argparse.Namespace) -> int:
    command = _command(args.job_command)
    is_train = command[0] == "train"
    template = _choose_template(args, is_train)
    if is_train:
        run_dir = _train_output_dir(command, args.nodes * args.gpus_per_node).resolve()
        if args.run_dir and Path(args.run_dir).resolve() != run_dir:
            raise TrajtuneError(f"a train job's run directory is its output_dir ({run_dir}); drop --run-dir "
                                f"{args.run_dir} or set output_dir={args.run_dir}")
    elif args.run_dir:
        run_dir = Path(args.run_dir).resolve()
    else:
        raise TrajtuneError(f"give --run-dir DIR for a {command[0]} job (where its script, logs and job ids go)")
    job_dir = run_dir / "slurm"

    directives: dict[str, str | None] = {
        "job-name": f"trajtune-{run_dir.name}", "chdir": os.getcwd(), "nodes": str(args.nodes),
        "output": str(job_dir / ("slurm-%A_%a.out" if template == "array" else "slurm-%j.out"))}
    if args.gpus_per_node is not None:
        directives["gpus-per-node"] = str(args.gpus_per_node)
    for name in ("array", "partition", "account", "time"):
        if getattr(args, name):
            directives[name] = getattr(args, name)
    if args.signal_lead is not None:
        directives["signal"] = f"B:USR1@{args.signal_lead}"
    knobs = {"TRAJTUNE_ARGS": "(" + shlex.join(command) + ")", "RUN_DIR": shlex.quote(str(run_dir))}
    if args.gpus_per_node is not None and template != "array":
        knobs["GPUS_PER_NODE"] = str(args.gpus_per_node)
    if args.launcher:
        knobs["LAUNCHER"] = args.launcher
    if args.max_requeues is not None:
        knobs["MAX_REQUEUES"] = str(args.max_requeues)
    text = render((TEMPLATE_DIR / f"{template}.sbatch").read_text(), directives, knobs)

    if not args.dry_run:
        _refuse_if_active(run_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    script = job_dir / f"{template}.sbatch"
    script.write_text(text)
    script.chmod(0o755)
    sbatch = ["sbatch", "--parsable", str(script)]
    if args.dry_run:
        print(f"rendered {script}\nwould run: {shlex.join(sbatch)}")
        return 0
    if shutil.which("sbatch") is None:
        raise TrajtuneError(f"sbatch is not on PATH: submit from a Slurm login node (the script is rendered: "
                            f"{script}), or use --dry-run to render only")
    proc = subprocess.run(sbatch, capture_output=True, text=True)
    if proc.returncode != 0:
        raise TrajtuneError(f"sbatch refused {script}: {proc.stderr.strip() or proc.stdout.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    with open(job_dir / "jobs.log", "a") as f:
        f.write(f"{job_id} {template} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    print(f"submitted job {job_id} ({template}, {args.nodes} node(s)); script {script}\n"
          f"follow it: trajtune slurm status {run_dir}")
    return 0


def _refuse_if_active(run_dir: Path) -> None:
    for job_id in job_ids(run_dir):
        state = job_state(job_id)["state"]
        if any(word in ACTIVE for word in state.replace(",", " ").split()):
            raise TrajtuneError(f"job {job_id} of {run_dir} is still {state}: a second job would write the same "
                                f"checkpoints; wait for it or scancel {job_id}, then submit again")


# --- status ---

def job_ids(run_dir: Path) -> list[str]:
    """Job ids submitted for this run dir, oldest first (RUN_DIR/slurm/jobs.log)."""
    log = run_dir / "slurm" / "jobs.log"
    return [line.split()[0] for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []


def _ask(cmd: list[str]) -> str | None:
    """stdout of a Slurm client command, or None when it is missing, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def job_state(job_id: str) -> dict[str, str]:
    """{"state", "restarts", "source"} of a job from squeue, else scontrol (jobs the controller still holds), else
    sacct (accounting); "unknown" where none knows it. An array job's tasks are listed, comma-separated."""
    queued = _ask(["squeue", "-h", "-j", job_id, "-o", "%i %T"])
    shown = _ask(["scontrol", "show", "job", job_id])
    restarts = ",".join(sorted(set(re.findall(r"\bRestarts=(\d+)", shown or "")))) or "?"
    if queued:
        rows = [line.split() for line in queued.splitlines()]
        state = rows[0][1] if len(rows) == 1 and rows[0][0] == job_id else ", ".join(" ".join(r) for r in rows)
        return {"state": state, "restarts": restarts, "source": "squeue"}
    if shown:
        states = re.findall(r"\bJobState=(\S+)", shown)
        return {"state": ", ".join(states), "restarts": restarts, "source": "scontrol"}
    accounted = _ask(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State,ExitCode"])
    if accounted:
        return {"state": ", ".join(accounted.splitlines()), "restarts": restarts, "source": "sacct"}
    return {"state": "unknown (no Slurm command knows it any more)", "restarts": restarts, "source": "-"}


def _tail(path: Path, n: int) -> list[str]:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64 * 1024))  # the end of a long log, not all of it
        return f.read().decode("utf-8", "replace").splitlines()[-n:]


def _signal_lead(run_dir: Path) -> int | None:
    for script in (run_dir / "slurm").glob("preemptible.sbatch"):
        m = re.search(r"^#SBATCH --signal=B:USR1@(\d+)", script.read_text(), re.M)
        if m:
            return int(m.group(1))
    return None


def status(run_dir: Path, lines: int = 3) -> int:
    if not run_dir.is_dir():
        raise TrajtuneError(f"{run_dir} is not a directory; give a run directory (a train run's output_dir)")
    ids = job_ids(run_dir)
    events = run_dir / "slurm" / "events.log"
    if not ids and not events.is_file():
        raise TrajtuneError(f"{run_dir} has no Slurm job (no slurm/jobs.log nor slurm/events.log): submit one with "
                            "trajtune slurm submit")
    print(f"run {run_dir}")
    for job_id in ids:
        info = job_state(job_id)
        starts = sum(1 for e in (events.read_text().splitlines() if events.is_file() else [])
                     if f" job {job_id} " in f" {e} " and re.search(r"\bstart \d+: (start|requeued)", e))
        print(f"job {job_id}: {info['state']} ({info['source']}); restarts {info['restarts']}, starts logged {starts}")
    if events.is_file():
        print("events (last 5):")
        for line in _tail(events, 5):
            print(f"  {line}")
    metrics = run_dir / "metrics.jsonl"
    steps = [json.loads(r) for r in _tail(metrics, 50) if r.strip().startswith("{")] if metrics.is_file() else []
    steps = [r for r in steps if "loss" in r]
    if steps:
        print(f"last step {steps[-1]['step']}: loss {steps[-1]['loss']:.4g}")
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*") if p.is_dir())
    latest = run_dir / "checkpoints" / "latest"
    print(f"checkpoints: {', '.join(checkpoints) or 'none'}"
          + (f"; latest {latest.read_text().strip()}" if latest.is_file() else ""))
    timing = run_dir / "logs" / "timing.json"
    lead = _signal_lead(run_dir)
    if timing.is_file() and lead is not None:
        t = json.loads(timing.read_text())
        if "step_seconds" in t and "checkpoint_seconds" in t:
            need = t["step_seconds"] + t["checkpoint_seconds"]
            verdict = "covers it" if need < lead else "is SHORTER: a preemption kills the job before its checkpoint"
            print(f"a step + a checkpoint take {need:.1f} s; the signal lead {lead} s {verdict}")
    if ids:
        out = sorted((run_dir / "slurm").glob(f"slurm-{ids[-1]}*.out"))
        for path in out:
            print(f"{path.relative_to(run_dir)} (last {lines} lines):")
            for line in _tail(path, lines):
                print(f"  {line}")
    for log in sorted((run_dir / "logs").glob("rank_*.log"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0)):
        print(f"{log.relative_to(run_dir)}:")
        for line in _tail(log, lines):
            print(f"  {line}")
    return 0
