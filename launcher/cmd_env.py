"""`trajtune env`: list an environment's tasks, or play one task by hand and see what it answers and scores.

    trajtune env tasks --env sql --tasks dev.jsonl --split held_in [--n 10] [--seed 0] [--with-gold]
    trajtune env run --env sql --tasks dev.jsonl --task dev-3 \\
        --call '{"name": "commit_final_answer", "arguments": {"answers": ["26"]}}'
    trajtune env run --env apis --task gen0-weather-0 --calls episode.jsonl

`tasks` prints one task per line: `{id, env, split, instruction, meta}`, and `gold` only with `--with-gold` (it is
what the reward compares against; a policy must never see it). `run` resets the task and prints JSON lines: first
`{"reset": [messages], "tools": [names]}`, then per tool call `{"call", "observation"}`, per final reply `{"answer", "next"}` (the
next user turn, or null when the episode is over), and last `{"reward", "done"}`. A call is `{"name",
"arguments"}` or the canonical `{"function": {...}}`; `--call` may repeat; `--calls FILE` holds one call per line,
where a line `{"answer": TEXT}` is a final reply (so a whole multi-turn episode can be scripted); `--answer TEXT`
is a final reply after all calls. `--env` takes a built-in name or MODULE:CLASS.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="env_command", metavar="ACTION", required=True)
    tasks = sub.add_parser("tasks", help="print an environment's tasks, one JSON object per line")
    run = sub.add_parser("run", help="run tool calls (and replies) on one task; print observations and the reward")
    for p in (tasks, run):
        p.add_argument("--env", required=True, help="environment: sql, shell, apis, seal_tools, or MODULE:CLASS")
        p.add_argument("--tasks", default=None, help="the environment's tasks file (e.g. AgentBench DB JSONL for sql)")
        p.add_argument("--seed", type=int, default=0, help="seed of generated tasks and of the episode (default 0)")
    tasks.add_argument("--split", choices=["held_in", "held_out"], default=None, help="only tasks of this split")
    tasks.add_argument("--n", type=int, default=None, help="only the first N tasks")
    tasks.add_argument("--with-gold", dest="with_gold", action="store_true",
                       help="include each task's gold (what the reward compares against)")
    run.add_argument("--task", required=True, help="the task id (see `trajtune env tasks`)")
    run.add_argument("--call", action="append", default=[], metavar="JSON",
                     help='a tool call, e.g. \'{"name": "execute_sql", "arguments": {"query": "SELECT 1"}}\'; repeatable')
    run.add_argument("--calls", default=None, metavar="FILE",
                     help='JSONL: one call per line, or {"answer": TEXT} for a final reply')
    run.add_argument("--answer", default=None, metavar="TEXT", help="a final reply (no tool calls) after the calls")


def _print(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def _as_call(obj: Any, index: int, where: str) -> dict[str, Any]:
    """A canonical tool call from `{"name", "arguments"}` or `{"function": {...}}`, with an id if it has none."""
    from ..data_builders.errors import TrajtuneError

    fn = obj.get("function", obj) if isinstance(obj, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise TrajtuneError(f"{where}: a call is {{\"name\": ..., \"arguments\": {{...}}}}, got {str(obj)[:200]}")
    return {"id": obj.get("id") or f"call_{index}", "type": "function",
            "function": {"name": fn["name"], "arguments": fn.get("arguments", {})}}


def _actions(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """("call", call) and ("answer", text) in order: --call ..., then --calls FILE, then --answer."""
    from ..data_builders.errors import TrajtuneError
    from ..data_builders.trajectory import InvalidRecord, iter_lines, parse_line

    actions: list[tuple[str, Any]] = []
    for i, text in enumerate(args.call):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise TrajtuneError(f"--call #{i + 1}: not JSON ({e.msg} at char {e.pos}): {text[:200]}") from None
        actions.append(("call", _as_call(obj, len(actions), f"--call #{i + 1}")))
    if args.calls:
        try:
            lines = list(iter_lines(args.calls))
        except OSError as e:
            raise TrajtuneError(f"--calls {args.calls}: cannot read it ({e.strerror})") from None
        for lineno, raw in lines:
            where = f"{args.calls}:{lineno}"
            try:
                obj = parse_line(raw)
            except InvalidRecord as e:
                raise TrajtuneError(f"{where}: {e.detail}") from None
            if "answer" in obj:
                actions.append(("answer", str(obj["answer"])))
            else:
                actions.append(("call", _as_call(obj, len(actions), where)))
    if args.answer is not None:
        actions.append(("answer", args.answer))
    return actions


def run(args: argparse.Namespace) -> int:
    from ..data_builders.envs import make_env
    from ..data_builders.errors import TrajtuneError

    env = make_env(args.env, tasks_file=args.tasks)
    try:
        if args.env_command == "tasks":
            tasks = env.tasks(split=args.split, n=args.n, seed=args.seed)
            for task in tasks:
                _print({k: v for k, v in task.items() if k != "gold" or args.with_gold})
            print(f"{len(tasks)} tasks", file=sys.stderr)
            return 0
        actions = _actions(args)
        task = next((t for t in env.tasks(seed=args.seed) if t["id"] == args.task), None)
        if task is None:
            raise TrajtuneError(f"no task {args.task!r} in --env {args.env}"
                                + (f" --tasks {args.tasks}" if args.tasks else f" (generated, --seed {args.seed})")
                                + f"; list the ids with `trajtune env tasks --env {args.env}`")
        _print({"reset": env.reset(task, seed=args.seed), "tools": [t["function"]["name"] for t in env.tools()]})
        for kind, action in actions:
            if kind == "call":
                _print({"call": action, "observation": env.step(action)})
            else:
                _print({"answer": action, "next": env.respond({"role": "assistant", "content": action})})
        _print({"reward": env.reward(), "done": env.done})
        return 0
    finally:
        env.close()
