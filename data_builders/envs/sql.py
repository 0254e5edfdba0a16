"""The `sql` environment: a SQLite database in memory per episode, with AgentBench's DB tools and grading.

    env = make_env("sql", tasks_file="dev.jsonl")     # AgentBench DB tasks; without a file: generated tasks
    messages = env.reset(env.tasks(split="held_in")[0])

Tools (AgentBench's schemas): `execute_sql(query)` runs one statement and answers with AgentBench's raw response,
`str(rows)` cut at 800 characters (`[]` for a statement without rows); `commit_final_answer(answers)` ends the
episode. Reward (1.0 / 0.0, `sql_db`): a SELECT task's committed answers against its label by AgentBench's rules;
an INSERT / UPDATE / DELETE task's table hash against the one recorded (`answer_md5`) or, without it, the hash
after the reference query on a fresh copy. Nothing committed scores 0.

Tasks: an AgentBench DB file (`{"description", "label", "table", "type", "add_description", "sql", "answer_md5",
"source"}` per line; ids `<file stem>-<line index>`) split by source dataset: wikisql and wikitq held-in, hybridqa
and fetaqa held-out (their tables never appear held-in). Without a file: `sql_gen.generate_sql_tasks(seed)`, split
by table family. On AgentBench's dev file the labels, not the reference queries, are the truth: 8 of the 20 SELECT
queries do not run in SQLite and 8 of the other 12 do not reproduce the label; the oracle says so (`Unsolvable`).
"""

from __future__ import annotations

import ast
import copy
import json
import sqlite3
from pathlib import Path
from typing import Any

from ..errors import TrajtuneError
from ..trajectory import InvalidRecord, Message, Tool, ToolCall, iter_lines, parse_line
from .base import SPLITS, Environment, Task, Unsolvable, call_arguments, tool_error, tool_message
from .sql_db import TRUNCATED, answers_from_rows, answers_match, open_database, run_query, table_state_md5
from .sql_gen import SCHEMA_HINT, generate_sql_tasks

SYSTEM_PROMPT = (
    "I will ask you a question, then you should help me operate a SQLite database with SQL to answer the question.\n"
    "You have to explain the problem and your solution to me and write down your thoughts.\n"
    "After thinking and explaining thoroughly, every round you can choose to operate or to answer with the two "
    "specific tools provided.\n"
    "If you should execute a SQL query, use the `execute_sql` function. Your SQL should be in one line, and you can "
    "only execute one SQL statement at a time.\n"
    "If you are done operating, and you want to commit your final answer, then use the `commit_final_answer` "
    "function. Your answer must be exactly the same as the correct answer.\n"
    "If the question is about modifying the database, then after done operation, your answer field can be anything.\n"
    "Your input will be the raw response of the database: a list of row tuples."
)  # AgentBench's DB prompt, for SQLite

TOOLS: list[Tool] = [
    {"type": "function", "function": {
        "name": "execute_sql", "description": "Executes a given SQL statement on the database and returns the result.",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string", "description": "The SQL query to be executed."}},
            "required": ["query"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "commit_final_answer", "description": "Commits the final answer after all operations are completed.",
        "parameters": {"type": "object", "properties": {
            "answers": {"type": "array", "items": {"type": "string"},
                        "description": "The list of final answers to commit."}},
            "required": ["answers"], "additionalProperties": False}}},
]
_PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

MODIFY_TYPES = ("INSERT", "UPDATE", "DELETE")
HELD_OUT_SOURCES = ("hybridqa", "fetaqa")
EXPLORE_QUERY = "SELECT name, sql FROM sqlite_master WHERE type = 'table'"


def load_agentbench_tasks(path: str | Path) -> list[Task]:
    """AgentBench DB tasks from a JSONL file; TrajtuneError naming the file and line of a record that is not one."""
    path = Path(path)
    if not path.is_file():
        raise TrajtuneError(f"{path}: tasks file not found")
    tasks: list[Task] = []
    for index, (lineno, raw) in enumerate(iter_lines(path)):
        where = f"{path}:{lineno}"
        try:
            entry = parse_line(raw)
        except InvalidRecord as e:
            raise TrajtuneError(f"{where}: {e.detail}") from None
        tasks.append(_agentbench_task(entry, f"{path.stem}-{index}", where))
    return tasks


def _agentbench_task(entry: dict[str, Any], task_id: str, where: str) -> Task:
    missing = [k for k in ("description", "label", "table", "type") if k not in entry]
    if missing:
        raise TrajtuneError(f"{where}: not an AgentBench DB task: missing {', '.join(missing)} (each line needs "
                            "description, label, table and type, as in AgentBench's data/dbbench/*.jsonl)")
    tables = entry["table"] if isinstance(entry["table"], list) else [entry["table"]]
    if not all(isinstance(t, dict) and "table_name" in t and "columns" in t.get("table_info", {}) for t in tables):
        raise TrajtuneError(f"{where}: `table` must be {{table_name, table_info: {{columns, rows}}}} (or a list)")
    label, qtype = entry["label"], (entry["type"] or ["SELECT"])[0]
    if not isinstance(label, list):
        raise TrajtuneError(f"{where}: `label` must be a list, got {type(label).__name__}")
    if qtype in MODIFY_TYPES:
        if not label or not isinstance(label[0], str):
            raise TrajtuneError(f"{where}: a {qtype} task's label must hold its reference statement")
        gold = {"kind": "modify", "tables": tables, "query": label[0], "state_md5": _recorded_md5(entry, where)}
        if gold["state_md5"] is None:  # no recorded hash: AgentBench hashes the reference query's result, so do we
            gold["state_md5"] = _state_after(tables, label[0], where)
    else:
        gold = {"kind": "select", "tables": tables, "query": (entry.get("sql") or {}).get("query"), "answers": label}
    prompt = f"Question: {entry['description']}"
    if entry.get("add_description"):
        prompt = SCHEMA_HINT + entry["add_description"] + "\n" + prompt
    if entry.get("evidence"):
        prompt = "Evidence about the question: " + entry["evidence"] + "\n" + prompt
    source = entry.get("source", "")
    return {"id": task_id, "env": "sql", "split": "held_out" if source in HELD_OUT_SOURCES else "held_in",
            "instruction": prompt, "gold": gold,
            "meta": {"source": "agentbench", "dataset": source, "type": qtype,
                     "tables": [t["table_name"] for t in tables]}}


def _recorded_md5(entry: dict[str, Any], where: str) -> str | None:
    raw = entry.get("answer_md5")
    if not raw:
        return None
    try:  # MySQL's response as text: "[('<md5>',)]"
        return str(ast.literal_eval(raw)[0][0])
    except (ValueError, SyntaxError, IndexError, TypeError):
        raise TrajtuneError(f"{where}: answer_md5 {raw[:80]!r} is not MySQL's \"[('<md5>',)]\"") from None


def _state_after(tables: list[dict[str, Any]], query: str, where: str) -> str:
    con = open_database(tables)
    try:
        run_query(con, query)
        return table_state_md5(con, tables)
    except (sqlite3.Error, ValueError) as e:
        raise TrajtuneError(f"{where}: the reference statement fails in SQLite ({e}) and no answer_md5 is "
                            "recorded, so the task cannot be graded") from None
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------------------


class SqlEnv(Environment):
    """SQLite episodes for AgentBench DB tasks (`tasks_file`) or generated ones; see the module docstring."""

    name = "sql"

    def __init__(self, tasks_file: str | None = None, **options: Any) -> None:
        super().__init__(tasks_file, **options)
        self._con: sqlite3.Connection | None = None
        self._answers: list[str] | None = None
        self._file_tasks: list[Task] | None = None

    def tasks(self, split: str | None = None, n: int | None = None, seed: int = 0) -> list[Task]:
        if split is not None and split not in SPLITS:
            raise TrajtuneError(f"unknown split {split!r}; choose {' or '.join(SPLITS)}")
        if self.tasks_file:
            if self._file_tasks is None:
                self._file_tasks = load_agentbench_tasks(self.tasks_file)
            tasks = self._file_tasks
        else:
            tasks = generate_sql_tasks(seed)
        tasks = [t for t in tasks if split is None or t["split"] == split]
        return tasks if n is None else tasks[:n]

    def tools(self) -> list[Tool]:
        return copy.deepcopy(TOOLS)  # a caller may normalise its copy in place

    def reset(self, task: Task, seed: int = 0) -> list[Message]:
        self.close()
        self.task, self.done, self._answers = task, False, None
        self._con = open_database(task["gold"]["tables"])
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task["instruction"]}]

    def step(self, call: ToolCall) -> Message:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            return tool_error(call, "bad_call", f"a tool call needs a function name, got {str(call)[:200]}")
        name = fn["name"]
        if self.done or self._con is None:
            return tool_error(call, "episode_over", "the answer is committed; the episode is over")
        if name not in _PARAMS:
            return tool_error(call, "unknown_tool", f"no tool named {name!r} (available: {', '.join(_PARAMS)})")
        args, error = call_arguments(call, name, _PARAMS[name])
        if error is not None:
            return error
        if name == "commit_final_answer":
            self._answers, self.done = list(args["answers"]), True
            return tool_message(call, json.dumps({"committed": self._answers}, ensure_ascii=False))
        try:
            return tool_message(call, run_query(self._con, args["query"]))
        except (sqlite3.Error, ValueError, OverflowError) as e:  # the database's answer to a bad statement
            return tool_error(call, "sql_error", f"{type(e).__name__}: {e}")

    def reward(self) -> float:
        if self.task is None or self._answers is None or self._con is None:
            return 0.0
        gold = self.task["gold"]
        if gold["kind"] == "select":
            return float(answers_match(self._answers, gold["answers"]))
        try:
            return float(table_state_md5(self._con, gold["tables"]) == gold["state_md5"])
        except sqlite3.Error:  # a table dropped or renamed
            return 0.0

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    # --- the oracle: explore if the prompt gives no schema, run the reference query, commit what it returned

    def oracle_act(self, messages: list[Message]) -> Message:
        assert self.task is not None, "reset first"
        gold, user = self.task["gold"], messages[1]["content"] if len(messages) > 1 else ""
        ran = [c["function"]["arguments"].get("query") for m in messages if m["role"] == "assistant"
               for c in m.get("tool_calls") or [] if isinstance(c["function"]["arguments"], dict)]
        if SCHEMA_HINT not in user and EXPLORE_QUERY not in ran:
            return _say("The question does not say how the data is laid out, so I will list the tables and their "
                        "columns first.", "execute_sql", {"query": EXPLORE_QUERY}, messages)
        if not gold.get("query"):
            raise Unsolvable("the task records no reference query")
        if gold["query"] not in ran:
            used = [t["table_name"] for t in gold["tables"] if t["table_name"] in gold["query"]] or ["the table"]
            where = f"table {used[0]} holds" if len(used) == 1 else f"tables {' and '.join(used)} hold"
            verb = "answer the question" if gold["kind"] == "select" else "make the change"
            return _say(f"The {where} what I need. To {verb} I will run: {gold['query']}", "execute_sql",
                        {"query": gold["query"]}, messages)
        result = messages[-1]["content"] if messages[-1]["role"] == "tool" else ""
        if result.startswith('{"error"'):
            raise Unsolvable(f"the reference query fails in SQLite: {json.loads(result)['error']['message']}")
        if gold["kind"] == "modify":
            if table_state_md5(self._con, gold["tables"]) != gold["state_md5"]:  # type: ignore[arg-type]
                raise Unsolvable("the reference statement does not reproduce the recorded table state (answer_md5)")
            return _say("The statement ran, so the table now holds the change; I will commit.",
                        "commit_final_answer", {"answers": []}, messages)
        if result.endswith(TRUNCATED):
            raise Unsolvable("the reference query's result is longer than the database shows (truncated)")
        answers = answers_from_rows(ast.literal_eval(result))
        if not answers_match(answers, gold["answers"]):  # the check, never the source, of the answer
            raise Unsolvable(f"the reference query does not reproduce the label: it returns {answers[:5]}, the label is "
                             f"{gold['answers'][:5]}")
        return _say(f"The query returned {result}; those are the answers.", "commit_final_answer",
                    {"answers": answers}, messages)


def _say(thought: str, name: str, arguments: dict[str, Any], messages: list[Message]) -> Message:
    """An assistant message: a short thought, then one call (ids count on over the conversation)."""
    n = sum(len(m.get("tool_calls") or []) for m in messages)
    return {"role": "assistant", "content": thought,
            "tool_calls": [{"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": arguments}}]}
