"""The `seal_tools` environment: Seal-Tools' catalog and queries, with simulated tool results.

`tasks_file` is a Seal-Tools data file (dev.jsonl, test_in_domain.jsonl, test_out_domain.jsonl, ...) with the catalog
`tool.jsonl` beside it, or the directory holding them (every *.jsonl but tool.jsonl and field.jsonl). A record
`{id, query, calling: [{api, parameters, responses}]}` becomes a task whose gold is its calls. Later calls may use an
earlier call's output: Seal-Tools numbers every output field of every call in order ("API_call_0", ...; a call's
`responses` lists its labels, one per field of the tool's declared `responses`) and writes the label, sometimes as
"API_call_1 response", where the value goes.

- Tools: the task's candidate tools, as OpenAI schemas (converters/seal_tools.py's `seal_tool`): the gold tools and
  `distractors` (default 3) others of the same field, shuffled by a hash of the task id.
- Observations: `simulate` hashes the call (name + arguments) into a JSON object with every declared output field
  and a plausible value of its type: the same call gives the same result on every run.
- Reward: 1.0 when the calls accepted match the gold calls (`match_calls`: names and arguments, any order, nothing
  extra), where a nested argument may be the label itself or the value that output had in this episode; else 0.
- Split: the out-of-domain file is held-out, the rest held-in; a held-in record that calls a tool of an
  out-of-domain one moves to held-out (6 of dev's 700), and those tools are never distractors of a held-in task: no
  tool of the out-of-domain set is ever offered in training, and every held-out task needs one.
- Oracle: makes the gold calls in order (the calls are the task's plan, not its answer), independent ones together,
  a nested argument filled from the result it names, then answers from the results. A task whose gold arguments
  break the tool's own schema (8 of dev's: "per month" for a number, a label for an integer id) is `Unsolvable`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

from ..converters.seal_tools import coerce, load_catalog, seal_tool
from ..errors import TrajtuneError
from ..trajectory import InvalidRecord, Message, Tool, ToolCall, check_arguments, iter_lines, parse_line
from .base import Environment, Task, Unsolvable, call_arguments, tool_error, tool_message

CATALOG = "tool.jsonl"
NOT_DATA = {CATALOG, "field.jsonl"}
LABEL = re.compile(r"API_call_\d+")
PLACEHOLDER = re.compile(r"^\s*(API_call_\d+)(\s+response)?\s*$")  # an argument that is only a label
SYSTEM = ("You are a helpful assistant with tools. Call the tools the request needs (a later call may use what an "
          "earlier one returned), then answer from their results.")
STATUSES = ["success", "completed", "active", "pending", "approved"]


# ---------------------------------------------------------------------------------------------------------
# The catalog and the tasks


def data_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.glob("*.jsonl") if p.name not in NOT_DATA)
    if path.is_file():
        return [path]
    raise TrajtuneError(f"--tasks {path}: no such file or directory (give a Seal-Tools data file with {CATALOG} "
                        "beside it, or their directory)")


def read_records(files: list[Path], catalog: dict[str, dict[str, Any]]) -> list[tuple[Path, dict[str, Any]]]:
    records = []
    for file in files:
        for lineno, raw in iter_lines(file):
            try:
                rec = parse_line(raw)
                calls = [(step["api"], step.get("parameters") or {}, step.get("responses") or [])
                         for step in rec["calling"]]
                if not isinstance(rec["query"], str) or not calls:
                    raise ValueError("needs a query and at least one call")
            except (KeyError, TypeError, ValueError) as e:  # InvalidRecord (not JSON) is a ValueError
                raise TrajtuneError(f"{file}:{lineno}: not a Seal-Tools record {{id, query, calling: [{{api, "
                                    f"parameters, responses}}]}} ({type(e).__name__}: {e})") from None
            missing = sorted({name for name, _, _ in calls} - set(catalog))
            if missing:
                raise TrajtuneError(f"{file}:{lineno}: calls {', '.join(missing)}, which {CATALOG} does not "
                                    "define; use the catalog the data was made with")
            records.append((file, rec))
    return records


def held_out_source(file: Path, rec: dict[str, Any]) -> bool:
    return "out_domain" in file.name or str(rec.get("id", "")).startswith("test_out_domain")


def candidates(task_id: str, gold: list[str], catalog: dict[str, dict[str, Any]], by_field: dict[str, list[str]],
               banned: set[str], k: int) -> list[str]:
    """The gold tools and `k` distractors of the same top-level field (`by_field`: field -> names; others when too
    few), never a `banned` tool, shuffled; deterministic from `task_id`."""
    rng = random.Random(f"seal_tools:{task_id}")
    fields = {top_field(catalog[name]) for name in gold}
    near = [n for top in sorted(fields) for n in by_field[top] if n not in gold and n not in banned]
    picked = rng.sample(near, min(k, len(near)))
    if len(picked) < k:
        far = [n for n in catalog if n not in gold and n not in banned and n not in picked]
        picked += rng.sample(far, min(k - len(picked), len(far)))
    names = list(dict.fromkeys(gold)) + picked
    rng.shuffle(names)
    return names


def top_field(spec: dict[str, Any]) -> str:
    return str(spec.get("field", "")).split("/")[0]


def by_top_field(catalog: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Tool names by top-level field, in catalog order."""
    index: dict[str, list[str]] = {}
    for name, spec in catalog.items():
        index.setdefault(top_field(spec), []).append(name)
    return index


# ---------------------------------------------------------------------------------------------------------
# Simulated results and the call checker (pure functions)


def simulate(spec: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """A plausible result for a call: every declared output field, a value of its type, from a hash of the call."""
    key = json.dumps([spec["api_name"], arguments], sort_keys=True, ensure_ascii=False, default=str)
    # The first string argument in the tool's declared order: the arguments' own order must not matter.
    declared = list(spec.get("parameters") or {})
    order = [k for k in declared if k in arguments] + sorted(set(arguments) - set(declared))
    context = next((arguments[k] for k in order if isinstance(arguments[k], str) and arguments[k].strip()),
                   spec["api_name"])[:40]
    out: dict[str, Any] = {}
    for name, field in (spec.get("responses") or {}).items():
        x = int.from_bytes(hashlib.sha256(f"{key}|{name}".encode()).digest()[:8], "big")
        kind = field.get("type") if isinstance(field, dict) else None
        if kind == "int":
            out[name] = 1 + x % 1000
        elif kind == "float":
            out[name] = round((x % 100000) / 100, 2)
        elif kind == "bool":
            out[name] = x % 4 != 0
        elif name.endswith("id") or "code" in name or "number" in name:
            out[name] = f"{name.upper()[:3]}-{x % 16**6:06X}"
        elif "status" in name:
            out[name] = STATUSES[x % len(STATUSES)]
        elif "date" in name:
            out[name] = f"2024-{1 + x % 12:02d}-{1 + x % 28:02d}"
        elif "url" in name or "link" in name:
            out[name] = f"https://example.com/{name}/{x % 16**6:06x}"
        else:
            out[name] = f"{name.replace('_', ' ')} for {context} (ref {x % 16**4:04x})"
    return out


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def values_equal(made: Any, gold: Any, schema: dict[str, Any]) -> bool:
    """Seal-Tools compares str(value)s; we also let "63" equal 63 for an integer parameter (its data does both)."""
    a, b = coerce(made, schema), coerce(gold, schema)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or as_text(a) == as_text(b)
    return a == b or as_text(a) == as_text(b)


def output_labels(spec: dict[str, Any], labels: list[str]) -> dict[str, str]:
    """label -> output field name, for one gold call (its `responses` labels in the order of the tool's fields)."""
    return dict(zip(labels, spec.get("responses") or {}))


def match_calls(made: list[dict[str, Any]], gold: list[dict[str, Any]],
                catalog: dict[str, dict[str, Any]]) -> tuple[bool, str | None]:
    """Do the calls made (`{name, arguments, result}`, accepted ones) match the gold calls (`{name, arguments,
    outputs}`)? Any order, nothing missing, nothing extra. A gold argument that is a label ("API_call_1") matches
    the label or the value that output had in the matched call's result. (valid, error_type)."""
    values: dict[str, Any] = {}  # label -> the value its output had in this episode
    used: set[int] = set()
    for g in gold:
        spec = catalog[g["name"]]
        props = seal_tool(spec)["function"]["parameters"]["properties"]
        found = next((j for j, m in enumerate(made) if j not in used and m["name"] == g["name"]
                      and arguments_match(m["arguments"], g["arguments"], props, values)), None)
        if found is None:
            return False, f"seal_tools:missing_call:{g['name']}"
        used.add(found)
        for label, field in output_labels(spec, g["outputs"]).items():
            values[label] = made[found]["result"].get(field)
    extra = [m["name"] for j, m in enumerate(made) if j not in used]
    return (False, f"seal_tools:extra_call:{extra[0]}") if extra else (True, None)


def arguments_match(made: dict[str, Any], gold: dict[str, Any], props: dict[str, Any], values: dict[str, Any]) -> bool:
    if set(made) != set(gold):
        return False
    for key, g in gold.items():
        m = made[key]
        hit = PLACEHOLDER.match(g) if isinstance(g, str) else None
        if hit:
            label = hit.group(1)
            if m == g or m == label or (label in values and values_equal(m, values[label], props.get(key, {}))):
                continue
            return False
        if not values_equal(m, g, props.get(key, {})):
            return False
    return True


# ---------------------------------------------------------------------------------------------------------
# The environment


class SealToolsEnv(Environment):
    """See the module docstring. Option: distractors (tools offered beside the gold ones, default 3)."""

    name = "seal_tools"

    def __init__(self, tasks_file: str | None = None, **options: Any) -> None:
        unknown = sorted(set(options) - {"distractors"})
        if unknown:
            raise TrajtuneError(f"seal_tools environment: unknown option(s) {', '.join(unknown)}; known: distractors")
        super().__init__(tasks_file, **options)
        if tasks_file is None:
            raise TrajtuneError("seal_tools needs --tasks: a Seal-Tools data file (dev.jsonl, test_in_domain.jsonl, "
                                f"...) with {CATALOG} beside it, or their directory")
        path = Path(tasks_file)
        self.files = data_files(path)
        catalog_path = (path if path.is_dir() else path.parent) / CATALOG
        if not catalog_path.is_file():
            raise TrajtuneError(f"--tasks {path}: no {CATALOG} beside it; Seal-Tools tasks need the API catalog")
        self.catalog = load_catalog(str(catalog_path))
        self.distractors = int(options.get("distractors", 3))
        self._tasks: list[Task] | None = None
        self.offered: dict[str, Tool] = {}
        self.made: list[dict[str, Any]] = []
        self.answer: str | None = None

    def tasks(self, split: str | None = None, n: int | None = None, seed: int = 0) -> list[Task]:
        if self._tasks is None:
            self._tasks = self._load()
        tasks = [t for t in self._tasks if split is None or t["split"] == split]
        return tasks[:n] if n is not None else tasks

    def _load(self) -> list[Task]:
        records = read_records(self.files, self.catalog)
        by_field = by_top_field(self.catalog)
        held_out_tools = {s["api"] for f, r in records if held_out_source(f, r) for s in r["calling"]}
        tasks: list[Task] = []
        for file, rec in records:
            gold = [{"name": s["api"], "arguments": s.get("parameters") or {}, "outputs": s.get("responses") or []}
                    for s in rec["calling"]]
            names = [g["name"] for g in gold]
            meta: dict[str, Any] = {"source": file.name, "fields": sorted({self.catalog[n]["field"] for n in names})}
            split = "held_out" if held_out_source(file, rec) else "held_in"
            if split == "held_in" and held_out_tools.intersection(names):
                split = "held_out"
                meta["split_reason"] = f"calls held-out tool(s) {', '.join(sorted(held_out_tools & set(names)))}"
            banned = held_out_tools if split == "held_in" else set()
            meta["tools"] = candidates(str(rec["id"]), names, self.catalog, by_field, banned, self.distractors)
            tasks.append({"id": str(rec["id"]), "env": self.name, "split": split, "instruction": rec["query"],
                          "gold": {"calls": gold}, "meta": meta})
        return tasks

    def tools(self) -> list[Tool]:
        return list(self.offered.values())

    def reset(self, task: Task, seed: int = 0) -> list[Message]:
        unknown = [n for n in task["meta"]["tools"] if n not in self.catalog]
        if unknown:
            raise TrajtuneError(f"task {task['id']}: tools {', '.join(unknown)} are not in {CATALOG}")
        self.task, self.done, self.made, self.answer = task, False, [], None
        self.offered = {n: seal_tool(self.catalog[n]) for n in task["meta"]["tools"]}
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task["instruction"]}]

    def step(self, call: ToolCall) -> Message:
        fn = call.get("function") or {}
        name = fn.get("name")
        if name not in self.offered:
            return tool_error(call, "unknown_tool", f"no tool named {name!r} (available: {', '.join(self.offered)})")
        params = self.offered[name]["function"]["parameters"]
        args, error = call_arguments(call, name)
        if error is not None:
            return error
        unexpected = sorted(set(args) - set(params["properties"]))
        if unexpected:  # named before the schema's own errors: Seal-Tools' schemas do not forbid extra keys
            return tool_error(call, "bad_arguments", f"arguments of {name}: unexpected {', '.join(unexpected)} "
                              f"(parameters: {', '.join(params['properties']) or 'none'})")
        try:
            check_arguments(args, params, f"arguments of {name}")
        except InvalidRecord as e:
            return tool_error(call, "bad_arguments", e.detail)
        result = simulate(self.catalog[name], args)
        self.made.append({"name": name, "arguments": args, "result": result})
        return tool_message(call, json.dumps(result, ensure_ascii=False))

    def respond(self, reply: Message) -> Message | None:
        self.answer = reply.get("content") or ""
        self.done = True
        return None

    def reward(self) -> float:
        if self.task is None:
            return 0.0
        return float(match_calls(self.made, self.task["gold"]["calls"], self.catalog)[0])

    def oracle_act(self, messages: list[Message]) -> Message:
        """The next batch of gold calls whose nested arguments are known from earlier results, else the answer."""
        if self.task is None:
            raise Unsolvable("reset(task) first")
        gold = self.task["gold"]["calls"]
        results = {m.get("tool_call_id"): m.get("content") for m in messages if m.get("role") == "tool"}
        sent = [c for m in messages if m.get("role") == "assistant" for c in m.get("tool_calls") or []]
        values: dict[str, Any] = {}
        for i, call in enumerate(sent):  # the oracle's call_i is gold call i
            result = json.loads(results.get(call["id"]) or "{}")
            if "error" in result:
                raise Unsolvable(f"gold call {gold[i]['name']} was refused: {result['error'].get('message')}")
            spec = self.catalog[gold[i]["name"]]
            labels = output_labels(spec, gold[i]["outputs"])
            values.update({label: result.get(field) for label, field in labels.items()})
        batch = []
        for i in range(len(sent), len(gold)):
            labels = [x for v in gold[i]["arguments"].values() if isinstance(v, str) for x in LABEL.findall(v)]
            if any(label not in values for label in labels):
                break  # it needs an output we have not seen yet: call it in a later turn
            batch.append(self._oracle_call(i, values))
        if batch:
            names = ", ".join(c["function"]["name"] for c in batch)
            thought = (f"I'll call {names}." if not sent else f"With those results, next: {names}.")
            return {"role": "assistant", "content": thought, "tool_calls": batch}
        if len(sent) < len(gold):
            raise Unsolvable(f"gold call {gold[len(sent)]['name']} names an output no earlier call has")
        lines = [f"- {c['function']['name']}: " + ", ".join(f"{k} = {as_text(v)}" for k, v in
                                                           json.loads(results[c["id"]]).items()) for c in sent]
        return {"role": "assistant", "content": "Here is what the tools returned:\n" + "\n".join(lines)}

    def _oracle_call(self, i: int, values: dict[str, Any]) -> ToolCall:
        g = self.task["gold"]["calls"][i]  # type: ignore[index]
        params = self.offered[g["name"]]["function"]["parameters"]
        args = {}
        for key, value in g["arguments"].items():
            schema = params["properties"].get(key, {})
            hit = PLACEHOLDER.match(value) if isinstance(value, str) else None
            if hit:
                value = values[hit.group(1)]
                if schema.get("type") == "string":
                    value = as_text(value)
            args[key] = coerce(value, schema)
        try:
            check_arguments(args, params, f"gold arguments of {g['name']}")
        except InvalidRecord as e:
            raise Unsolvable(f"{e.detail} (the gold call breaks the tool's own schema)") from None
        return {"id": f"call_{i}", "type": "function", "function": {"name": g["name"], "arguments": args}}
