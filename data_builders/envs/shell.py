"""The `shell` environment: a task directory of generated files and one tool, `bash(command)`, run in the
bubblewrap sandbox of `sandbox.py` (no network, only the task directory writable, time/CPU/memory/file/process/output
limits). Where the sandbox cannot start, `reset` refuses with the reason: there is no unsandboxed fallback.

Tasks come from families (shell_tasks.py): counts, searches, sums (answered in the final reply, as its last line
`Answer: <value>`), and edits, moves, renames and small scripts (checked on the directory afterwards). A family is
held-in or held-out as a whole, so held-out tasks need skills never shown in training. A task record carries its
family and generator key; `reset` rebuilds the directory from them, so task files stay small and runs resume.

Observations: the command's stdout and stderr interleaved (capped), with `[exit code N]` appended when N != 0; a
limit that stopped the command is an error observation `{"error": {"type": "timeout" | "cpu_limit" |
"file_size_limit" | "output_limit", "message"}}`, as is a bad call.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import TrajtuneError
from ..trajectory import Message, Tool, ToolCall, iter_lines, parse_line
from .base import Environment, Task, Unsolvable, call_arguments, tool_error, tool_message
from .sandbox import Limits, Sandbox, SandboxUnavailable
from .shell_tasks import FAMILIES, Case, make_case

BASH_TOOL: Tool = {"type": "function", "function": {
    "name": "bash",
    "description": "Run a bash command in the task's working directory (/workspace) and return its output "
                   "(stdout and stderr). The sandbox has no network; only /workspace is kept between calls; "
                   "each call has time, memory and output limits.",
    "parameters": {"type": "object", "properties": {
        "command": {"type": "string", "description": "The bash command line to run, e.g. `ls -R`."}},
        "required": ["command"]}}}
SYSTEM = ("You are an agent working in a Linux shell. Use the bash tool to run commands; the working directory is "
          "/workspace and holds the task's files. When you are done, reply with your final answer on the last line, "
          "as `Answer: <answer>` (for a task that changes files, `Answer: done`).")
LIMIT_ERRORS = {"timeout": "timeout", "cpu": "cpu_limit", "file_size": "file_size_limit", "output": "output_limit"}
OPTIONS = {"per_family": int, "wall_s": float, "cpu_s": int, "memory_mb": int, "output_kb": int, "pids": int,
           "file_mb": int, "cgroup_parent": str, "bwrap": str}
FIXED_MTIME = 1717200000  # 2024-06-01: generated files carry it, so `ls -l` shows the same on every run
ANSWER_LINE = re.compile(r"^\s*\**answer\**\s*:\s*\**\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


def final_answer(text: str | None) -> str:
    """The answer in a final reply: its last `Answer: ...` line, else its last non-empty line."""
    text = text or ""
    found = ANSWER_LINE.findall(text)
    if found:
        return found[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def answer_matches(answer: str, gold: dict[str, Any]) -> bool:
    """`answer` (from the final reply) against gold `{"answer", "match": "int" | "path"}`."""
    value = answer.strip(" `'\"").rstrip(".").strip(" `'\"")  # `notes/a.txt`. -> notes/a.txt
    if gold["match"] == "int":
        found = re.search(r"-?\d+", value.replace(",", ""))
        return found is not None and int(found.group()) == int(gold["answer"])
    return value.removeprefix("./").removeprefix("/workspace/") == gold["answer"]


def read_inside(root: Path, rel: str, limit: int = 1 << 20) -> str | None:
    """The text of regular file `root/rel`, or None when it is missing, not a regular file, reached through a
    symlink, or over `limit` bytes. The agent owns this directory: a symlink it planted must not make the host
    (reading as root) open a host file."""
    path = root / rel
    if os.path.realpath(path) != str(path) or not path.is_file() or path.stat().st_size > limit:
        return None
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


class ShellEnv(Environment):
    """See the module docstring. Options: per_family (tasks generated per family and seed, default 20), the
    sandbox's wall_s / cpu_s / memory_mb / file_mb / output_kb / pids, cgroup_parent, bwrap."""

    name = "shell"

    def __init__(self, tasks_file: str | None = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TrajtuneError(f"shell environment: unknown option(s) {', '.join(unknown)}; "
                                f"known: {', '.join(OPTIONS)}")
        options = {k: OPTIONS[k](v) for k, v in options.items()}
        super().__init__(tasks_file, **options)
        d = Limits()
        self.limits = Limits(wall_s=options.get("wall_s", d.wall_s), cpu_s=options.get("cpu_s", d.cpu_s),
                             memory_bytes=options.get("memory_mb", d.memory_bytes >> 20) << 20,
                             file_bytes=options.get("file_mb", d.file_bytes >> 20) << 20,
                             output_bytes=options.get("output_kb", d.output_bytes >> 10) << 10,
                             pids=options.get("pids", d.pids))
        self.sandbox: Sandbox | None = None
        self.workdir: Path | None = None
        self.case: Case | None = None
        self.answer: str | None = None

    # --- tasks -----------------------------------------------------------------------------------------------

    def tasks(self, split: str | None = None, n: int | None = None, seed: int = 0) -> list[Task]:
        tasks = self._read_tasks() if self.tasks_file else self._generate(seed)
        if split is not None:
            tasks = [t for t in tasks if t["split"] == split]
        return tasks[:n] if n is not None else tasks

    def _generate(self, seed: int) -> list[Task]:
        per_family = self.options.get("per_family", 20)
        out: list[Task] = []
        for k in range(per_family):  # round-robin, so the first n tasks cover every family
            for family in FAMILIES.values():
                gen = f"{seed}-{k}"
                case = make_case(family.name, gen)
                out.append({"id": f"shell-{family.name}-{gen}", "env": self.name, "split": family.split,
                            "instruction": case.instruction, "gold": case.gold,
                            "meta": {"family": family.name, "gen": gen, "kind": family.kind}})
        return out

    def _read_tasks(self) -> list[Task]:
        path = Path(str(self.tasks_file))
        if not path.is_file():
            raise TrajtuneError(f"--tasks {path}: no such file (shell tasks are JSONL records from "
                                "`trajtune env tasks --env shell`)")
        tasks: list[Task] = []
        for lineno, raw in iter_lines(path):
            try:
                task = parse_line(raw)
                family = FAMILIES[task["meta"]["family"]]
                make_case(family.name, task["meta"]["gen"])
            except (KeyError, TypeError, ValueError) as e:  # InvalidRecord (not JSON) is a ValueError
                raise TrajtuneError(f"{path}:{lineno}: not a shell task ({type(e).__name__}: {e}); a task needs "
                                    f"meta.family (one of {', '.join(FAMILIES)}) and meta.gen") from None
            task.setdefault("env", self.name)
            task.setdefault("split", family.split)
            tasks.append(task)
        return tasks

    # --- episode ---------------------------------------------------------------------------------------------

    def tools(self) -> list[Tool]:
        return [BASH_TOOL]

    def reset(self, task: Task, seed: int = 0) -> list[Message]:
        if self.sandbox is None:
            try:
                self.sandbox = Sandbox(self.limits, bwrap=self.options.get("bwrap", "bwrap"),
                                       cgroup_parent=self.options.get("cgroup_parent"))
            except SandboxUnavailable as e:
                raise TrajtuneError(f"shell environment: the sandbox cannot start, so no command will run: {e}") \
                    from None
        self._remove_workdir()
        self.task, self.done, self.answer = task, False, None
        self.case = make_case(task["meta"]["family"], task["meta"]["gen"])
        self.workdir = Path(tempfile.mkdtemp(prefix="trajtune-shell-")).resolve()
        write_tree(self.workdir, self.case.files)
        self.sandbox.adopt(self.workdir)
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task["instruction"]}]

    def step(self, call: ToolCall) -> Message:
        name = (call.get("function") or {}).get("name")
        if name != "bash":
            return tool_error(call, "unknown_tool", f"no tool named {name!r} (available: bash)")
        args, error = call_arguments(call, "bash")
        if error is not None:
            return error
        if not isinstance(args.get("command"), str) or set(args) != {"command"}:
            return tool_error(call, "bad_arguments", 'bash takes exactly {"command": "<a command line>"}')
        if self.sandbox is None or self.workdir is None:
            return tool_error(call, "no_episode", "call reset(task) before step")
        result = self.sandbox.run(args["command"], self.workdir)
        if result.limit is not None:
            lim = self.limits
            what = {"timeout": f"it ran past the {lim.wall_s:g} s wall-time limit",
                    "cpu": f"it used more than {lim.cpu_s} s of CPU",
                    "file_size": f"it wrote a file past the {lim.file_bytes >> 20} MiB file-size limit",
                    "output": f"it printed more than {lim.output_bytes >> 10} KiB"}[result.limit]
            tail = result.output[-1000:]
            return tool_error(call, LIMIT_ERRORS[result.limit],
                              f"the command was stopped: {what}." + (f" Its last output:\n{tail}" if tail else ""))
        text = result.output
        if result.exit_code:
            text += ("" if not text or text.endswith("\n") else "\n") + f"[exit code {result.exit_code}]"
        return tool_message(call, text if text else "(no output)")

    def respond(self, reply: Message) -> Message | None:
        self.answer = reply.get("content") or ""
        self.done = True
        return None

    def reward(self) -> float:
        if self.task is None or self.workdir is None:
            return 0.0
        gold = self.task["gold"]
        if "answer" in gold:
            return float(self.answer is not None and answer_matches(final_answer(self.answer), gold))
        for rel, content in (gold.get("files") or {}).items():
            if read_inside(self.workdir, rel) != content:
                return 0.0
        if any(os.path.lexists(self.workdir / rel) for rel in gold.get("absent") or []):
            return 0.0
        return float(self._script_works(gold["script"])) if "script" in gold else 1.0

    def _script_works(self, script: dict[str, Any]) -> bool:
        """Run the agent's script (in the sandbox) on probe files it has not seen; each must print the expected."""
        assert self.sandbox is not None and self.workdir is not None
        if read_inside(self.workdir, script["name"]) is None:
            return False
        for i, run in enumerate(script["runs"]):
            probe = f".trajtune-probe-{i}.txt"
            (self.workdir / probe).write_text(run["input"], encoding="utf-8")
            self.sandbox.adopt(self.workdir / probe)
            result = self.sandbox.run(f"./{script['name']} {probe}", self.workdir)
            if result.exit_code != 0 or result.output.strip() != run["output"]:
                return False
        return True

    # --- the scripted solver ---------------------------------------------------------------------------------

    def oracle_act(self, messages: list[Message]) -> Message:
        if self.case is None:
            raise Unsolvable("reset(task) first")
        outputs = [m.get("content") or "" for m in messages if m.get("role") == "tool"]
        plan = self.case.plan
        if len(outputs) < len(plan):
            thought, command = plan[len(outputs)]
            return {"role": "assistant", "content": thought, "tool_calls": [{
                "id": f"call_{len(outputs)}", "type": "function",
                "function": {"name": "bash", "arguments": {"command": command}}}]}
        if any(out.startswith('{"error"') for out in outputs):
            raise Unsolvable(f"a command of the plan failed: {next(o for o in outputs if o.startswith('{'))[:300]}")
        try:
            answer = self.case.extract(outputs) if self.case.extract else "done"
        except (ValueError, IndexError) as e:
            raise Unsolvable(f"cannot read the answer from the output ({e}): {outputs[-1][:300]!r}") from None
        return {"role": "assistant", "content": f"{self.case.conclusion}\nAnswer: {answer}"}

    def close(self) -> None:
        self._remove_workdir()
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None

    def _remove_workdir(self) -> None:
        if self.workdir is not None:
            remove_tree(self.workdir)
            self.workdir = None


def write_tree(root: Path, files: dict[str, str]) -> None:
    """Write `files` (relative path -> text) below `root`, every mtime FIXED_MTIME (listings are reproducible)."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (FIXED_MTIME, FIXED_MTIME))
    os.utime(root, (FIXED_MTIME, FIXED_MTIME))


def remove_tree(root: Path) -> None:
    """Delete a task directory. The agent may have made directories unreadable (`chmod 000`): root is not stopped
    by that, anyone else first gives them back their modes."""
    if os.geteuid() != 0:
        for dirpath, dirnames, _ in os.walk(root):
            for name in dirnames:  # before os.walk descends into them
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o700)
    shutil.rmtree(root, ignore_errors=True)
