"""SQLite databases for `sql` episodes, and AgentBench's DB grading rules, ported from its `result_processor.py`.

A database is built in memory from tables in AgentBench's shape, `{"table_name", "table_info": {"columns":
[{"name", "type"}], "rows": [[...]]}}`. As AgentBench's MySQL setup does, every column is TEXT unless the table says
`"typed": true` (the generator's own tables, whose numbers must compare as numbers). A connection refuses ATTACH
(which would write files), caps strings and blobs at 1 MB, and stops a statement after a fixed number of SQLite VM
steps, so a runaway query ends the same way on every machine.

Grading (AgentBench `DBResultProcessor`):
- SELECT: the committed answers and the label are cleaned alike (quotes stripped; a trailing `%` dropped; thousands
  separators removed; none / null / undefined / nan / inf / "" all read as "0"); one value each: equal if both are
  "0", within 0.01 if both are numbers, else equal strings; several values: matched one to one within 0.01 if all
  are numbers, else compared as sets.
- INSERT / UPDATE / DELETE: the table state after the episode must hash like the state after the reference query:
  per row the first 5 hex digits of md5(CONCAT_WS(',', columns)), sorted, joined with ',', md5 of that (the MySQL
  expression AgentBench runs; SQLite reproduces every dev task's recorded `answer_md5`).
"""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any

# AgentBench cuts a query's response at 800 characters and says so.
RESULT_CAP = 800
TRUNCATED = "[TRUNCATED]"
# Rows fetched at most per query: past RESULT_CAP characters nobody reads them anyway.
MAX_ROWS = 1000
# The longest string or blob a statement may make (randomblob(1e9) would take a gigabyte otherwise).
MAX_LENGTH = 1_000_000
# SQLite VM steps a statement may take (progress handler, checked every 1000 steps): ~1 s of work, but counted in
# steps, not seconds, so the limit is the same on every machine.
VM_STEPS = 20_000_000
_CHECK_EVERY = 1000

_SPECIAL = {"none", "null", "undefined", "nan", "inf", "infinity", "-inf", "-infinity", ""}


def quote(name: str) -> str:
    """A SQL identifier in double quotes (table and column names in AgentBench hold spaces, dots, colons)."""
    return '"' + name.replace('"', '""') + '"'


def open_database(tables: list[dict[str, Any]]) -> sqlite3.Connection:
    """A fresh in-memory database holding `tables`, in autocommit mode, ATTACH refused, VM steps bounded."""
    # check_same_thread=False: a rollout may run a step in a worker thread to time it out.
    con = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    if hasattr(con, "setlimit"):  # Python >= 3.11
        con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_LENGTH)
    for table in tables:
        info = table["table_info"]
        typed = table.get("typed", False)
        columns = ", ".join(f"{quote(c['name'])} {c['type'] if typed else 'TEXT'}" for c in info["columns"])
        con.execute(f"CREATE TABLE {quote(table['table_name'])} ({columns})")
        marks = ", ".join("?" * len(info["columns"]))
        rows = info["rows"] if typed else [[None if v is None else str(v) for v in row] for row in info["rows"]]
        con.executemany(f"INSERT INTO {quote(table['table_name'])} VALUES ({marks})", rows)

    def authorize(action: int, *_: Any) -> int:
        return sqlite3.SQLITE_DENY if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH) else sqlite3.SQLITE_OK

    con.set_authorizer(authorize)
    return con


def run_query(con: sqlite3.Connection, query: str) -> str:
    """Execute one statement and return AgentBench's raw response: `str(rows)` (a list of tuples, `[]` for a
    statement without rows), cut at RESULT_CAP characters. Raises sqlite3.Error (or ValueError for a NUL byte)."""
    steps = [0]

    def progress() -> int:
        steps[0] += _CHECK_EVERY
        return 1 if steps[0] > VM_STEPS else 0  # non-zero interrupts the statement

    con.set_progress_handler(progress, _CHECK_EVERY)
    try:
        cursor = con.execute(query)
        rows = cursor.fetchmany(MAX_ROWS) if cursor.description else []
    except sqlite3.OperationalError as e:
        if steps[0] > VM_STEPS:
            raise sqlite3.OperationalError(f"the statement ran past {VM_STEPS:,} SQLite VM steps and was stopped; "
                                           "narrow it down (a WHERE clause, a LIMIT)") from None
        raise e
    finally:
        con.set_progress_handler(None, _CHECK_EVERY)
    text = str(rows)
    return text[:RESULT_CAP] + TRUNCATED if len(text) > RESULT_CAP else text


def answers_from_rows(rows: list[tuple[Any, ...]]) -> list[str]:
    """The answers a careful agent commits for a result: every value, row by row, as text. An empty result is
    ["none"], the labels' convention for "no such row" (the grader reads none as "0")."""
    return [str(v) for row in rows for v in row] or ["none"]


def table_state_md5(con: sqlite3.Connection, tables: list[dict[str, Any]]) -> str:
    """AgentBench's hash of the tables' state (see the module docstring); several tables join their sorted hashes
    with '_'. Raises sqlite3.Error when a table is gone."""
    hashes = []
    for table in tables:
        columns = ", ".join(quote(c["name"]) for c in table["table_info"]["columns"])
        rows = con.execute(f"SELECT {columns} FROM {quote(table['table_name'])}").fetchall()
        # CONCAT_WS skips NULLs; MySQL's md5 of an empty GROUP_CONCAT is NULL, which AgentBench reads as "None".
        row_hashes = sorted(_md5(",".join(str(v) for v in row if v is not None))[:5] for row in rows)
        hashes.append(_md5(",".join(row_hashes)) if row_hashes else "None")
    return "_".join(sorted(hashes))


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# AgentBench's comparison of SELECT answers


def clean_value(value: Any) -> str:
    """One answer as AgentBench compares it: quotes stripped, `%` dropped, thousands separators removed, special
    values (none, null, nan, "", ...) read as "0"."""
    if value is None:
        return "0"
    text = str(value).strip().strip("'\"").strip()
    if text.endswith("%"):
        return text[:-1].strip()
    if "," in text and not text.startswith("[") and not text.endswith("]"):
        text = text.replace(",", "")
    return "0" if text.lower() in _SPECIAL else text


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _close(a: str, b: str) -> bool:
    return abs(float(a) - float(b)) <= 1e-2


def answers_match(answers: list[Any], label: list[Any]) -> bool:
    """AgentBench's verdict on committed `answers` against a task's `label` (both lists of values)."""
    got, want = [clean_value(v) for v in answers], [clean_value(v) for v in label]
    if len(got) == 1 and len(want) == 1:
        a, b = got[0], want[0]
        if _is_float(a) and _is_float(b):
            return _close(a, b)
        return a == b
    if all(map(_is_float, got)) and all(map(_is_float, want)):
        if len(got) != len(want):
            return False
        unmatched = list(want)
        for a in got:  # greedy one-to-one matching, as AgentBench does
            hit = next((i for i, b in enumerate(unmatched) if _close(a, b)), None)
            if hit is None:
                return False
            unmatched.pop(hit)
        return True
    return set(got) == set(want)
