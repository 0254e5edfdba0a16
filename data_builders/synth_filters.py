"""Staged filtering of trajectories (`trajtune filter`), like APIGen's checks, counted per stage and reason.

A record leaves at the first stage that rejects it; every one is kept or written to REJECTS with its stage, reason
and detail, and the manifest's counts reconcile (in = kept + rejected). Stages, in order:
1. format     parse + `validate_record` (calls parse, tools exist, arguments match schemas: trajectory.REASONS),
              every call answered by a tool result, some message trained (`filters.has_trained_message`);
2. execution  no unrecovered tool error (an error result not followed by a successful call of the same tool), no
              loop (the same call, name and arguments, LOOP_REPEATS times or more);
3. semantic   meta.reward >= min_reward (default 1.0: only fully successful trajectories, as AgentTuning kept);
4. decontam   no word n-gram shared with eval files (`filters.DecontamIndex`, what `trajtune build` uses);
5. length     rendered with the model's template by `render.render_batch` (the build's renderer) and maskable,
              at most seq_len tokens;
6. dedup      exact (`filters.exact_key`) or near (`filters.minhash_bands`) duplicates of an earlier kept record are
              dropped, the earliest kept (`filters.duplicates`, decided as the build decides).
Decontamination runs before length and dedup comes last, in the build's order, so what filter keeps, build keeps.
Each per-record check is a pure function record -> Verdict(ok, reason, detail).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from . import filters
from .errors import TrajtuneError
from .trajectory import REASONS, InvalidRecord, Trajectory, dumps, iter_lines, parse_line, validate_record

STAGES = ("format", "execution", "semantic", "decontam", "length", "dedup")
LOOP_REPEATS = 3  # the same call this many times is a loop: a deterministic tool answered it the same way each time
BATCH = 256  # records rendered together in the length stage
FILTER_REASONS = {
    **REASONS,
    "unanswered_call": "a tool call has no tool result answering it (e.g. the episode ran out of turns)",
    "no_trained_token": filters.DROP_REASONS["no_trained_token"],
    "unrecovered_tool_error": "a tool returned an error and no later call of that tool succeeded",
    "repeated_call": f"the same call (name and arguments) is made {LOOP_REPEATS} times or more: a loop",
    "low_reward": "meta.reward is below --min-reward",
    "no_reward": "meta.reward is missing or not a number (give --min-reward none to skip the semantic stage)",
    "contaminated": filters.DROP_REASONS["contaminated"],
    "overlong": "longer than --seq-len tokens when rendered with the template",
    "duplicate": filters.DROP_REASONS["duplicate"],
    "near_duplicate": filters.DROP_REASONS["near_duplicate"],
}  # + render.REASONS (length stage: the template cannot express or mask the record)


class Verdict(NamedTuple):
    ok: bool
    reason: str = ""  # a key of FILTER_REASONS (or render.REASONS) when not ok
    detail: str = ""  # what exactly, and where (messages[i])


OK = Verdict(True)


@dataclass
class FilterConfig:
    data: list[str] = field(default_factory=list)  # input JSONL files, deduplicated across in this order
    out: str = ""  # kept trajectories (normalised by validate_record)
    rejects: str | None = None  # default OUT.rejects.jsonl
    min_reward: float | None = 1.0  # None: no semantic stage
    tokenizer: str | None = None
    template: str | None = None
    prompt_format: str | None = None
    seq_len: int | None = None  # None: no length stage
    dedup: Literal["exact", "near", "none"] = "exact"
    decontam: list[str] = field(default_factory=list)
    decontam_n: int = 13


# ---------------------------------------------------------------------------------------------------------
# The checks: pure functions of one validated record


def check_calls_answered(record: Trajectory) -> Verdict:
    answered = {m.get("tool_call_id") for m in record["messages"] if m["role"] == "tool"}
    for i, m in enumerate(record["messages"]):
        for call in m.get("tool_calls") or ():
            if call["id"] not in answered:
                return Verdict(False, "unanswered_call", f"messages[{i}]: call {call['id']} "
                                                         f"({call['function']['name']}) has no tool result")
    return OK


def check_trained(record: Trajectory) -> Verdict:
    if filters.has_trained_message(record):
        return OK
    return Verdict(False, "no_trained_token", "no assistant message is trained")


def tool_error_of(content: str | None) -> str | None:
    """The error a tool result reports, as "type: message", or None. Errors are the environments' shape
    (`envs.tool_error`): a JSON object with an "error" key."""
    if not content or not content.lstrip().startswith("{"):
        return None
    try:
        obj = json.loads(content)
    except ValueError:
        return None
    if not isinstance(obj, dict) or "error" not in obj:
        return None
    err = obj["error"]
    if isinstance(err, dict):
        return f"{err.get('type', 'error')}: {err.get('message', '')}"
    return str(err)


def check_tool_errors(record: Trajectory) -> Verdict:
    """An error result must be followed by a successful result of the same tool (the agent recovered)."""
    pending: dict[str, tuple[int, str]] = {}  # tool name -> (message index, error) of its first unrecovered error
    for i, m in enumerate(record["messages"]):
        if m["role"] != "tool":
            continue
        error = tool_error_of(m.get("content"))
        if error is None:
            pending.pop(m.get("name", ""), None)
        else:
            pending.setdefault(m.get("name", ""), (i, error))
    if not pending:
        return OK
    name, (i, error) = min(pending.items(), key=lambda kv: kv[1][0])
    return Verdict(False, "unrecovered_tool_error", f"messages[{i}]: {name} returned an error ({error[:200]}) and "
                                                    f"no later call of {name} succeeded")


def check_loops(record: Trajectory) -> Verdict:
    calls = Counter((c["function"]["name"], json.dumps(c["function"]["arguments"], sort_keys=True))
                    for m in record["messages"] for c in m.get("tool_calls") or ())
    for (name, args), count in calls.items():
        if count >= LOOP_REPEATS:
            return Verdict(False, "repeated_call", f"{name}({args[:200]}) is called {count} times")
    return OK


def check_reward(record: Trajectory, min_reward: float) -> Verdict:
    reward = (record.get("meta") or {}).get("reward")
    if not isinstance(reward, (int, float)) or isinstance(reward, bool):
        return Verdict(False, "no_reward", f"meta.reward is {reward!r}")
    if reward < min_reward:
        return Verdict(False, "low_reward", f"meta.reward {reward} < {min_reward}")
    return OK


def check_decontam(record: Trajectory, index: filters.DecontamIndex) -> Verdict:
    hits = index.overlaps(record)
    return Verdict(False, "contaminated", "overlaps eval items: " + ", ".join(hits[:20])) if hits else OK


def check_length(rendered: Any, seq_len: int) -> Verdict:
    """A render's verdict: `rendered` is what render.render_batch gives for the record (a Rendered or RenderError)."""
    from .render import RenderError

    if isinstance(rendered, RenderError):
        return Verdict(False, rendered.reason, rendered.detail)
    if not any(rendered.loss_mask[1:]):  # as the build: the first token is never a label
        return Verdict(False, "no_trained_token", "the rendered loss mask is empty")
    if len(rendered.input_ids) > seq_len:
        return Verdict(False, "overlong", f"{len(rendered.input_ids)} tokens > --seq-len {seq_len}")
    return OK


# ---------------------------------------------------------------------------------------------------------
# The pipeline


def _check(cfg: FilterConfig) -> None:
    if not cfg.data:
        raise TrajtuneError("give --data FILE.jsonl")
    if not cfg.out:
        raise TrajtuneError("give --out FILE.jsonl")
    for path in cfg.data:
        if not Path(path).is_file():
            raise TrajtuneError(f"--data {path}: no such file")
        if Path(path).resolve() in (Path(cfg.out).resolve(), Path(cfg.rejects or cfg.out).resolve()):
            raise TrajtuneError(f"--data {path} is also the output: give another --out / --rejects")
    if (cfg.tokenizer or cfg.template) and cfg.seq_len is None:
        raise TrajtuneError("--tokenizer/--template are for the length stage: give --seq-len too")
    if cfg.seq_len is not None and not (cfg.tokenizer or cfg.template):
        raise TrajtuneError("--seq-len needs the model's tokenizer (--tokenizer DIR) or template (--template FILE)")
    if cfg.seq_len is not None and cfg.seq_len < 16:
        raise TrajtuneError(f"--seq-len must be at least 16, got {cfg.seq_len}")


def filter_trajectories(cfg: FilterConfig, log=print) -> dict[str, Any]:
    """Run the stages over cfg.data; write OUT (kept), REJECTS and OUT.manifest.json; return the manifest."""
    _check(cfg)
    out = Path(cfg.out)
    rejects_path = Path(cfg.rejects) if cfg.rejects else out.with_suffix(".rejects.jsonl")
    tokenizer = None
    if cfg.seq_len is not None:
        from .tokenizer import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer, cfg.template)
    index = filters.DecontamIndex(cfg.decontam, cfg.decontam_n) if cfg.decontam else None
    per_record = [("format", check_calls_answered), ("format", check_trained),
                  ("execution", check_tool_errors), ("execution", check_loops)]
    if cfg.min_reward is not None:
        per_record.append(("semantic", lambda r: check_reward(r, cfg.min_reward)))
    if index is not None:
        per_record.append(("decontam", lambda r: check_decontam(r, index)))

    rejected: dict[str, Counter] = {s: Counter() for s in STAGES}
    records_in = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # survivors of the per-record stages, before dedup
    origins: list[tuple[str, int]] = []  # (file, line) of each survivor
    keys: list[int] = []
    bands: list[list[int]] = []

    with open(rejects_path, "w", encoding="utf-8") as rej, open(partial, "w", encoding="utf-8") as part:

        def reject(stage: str, verdict: Verdict, file: str, line: int, rid: str, raw: bytes | str) -> None:
            rejected[stage][verdict.reason] += 1
            text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
            rej.write(json.dumps({"file": file, "line": line, "id": rid, "stage": stage, "reason": verdict.reason,
                                  "detail": verdict.detail, "raw": text}, ensure_ascii=False) + "\n")

        def keep(record: Trajectory, file: str, line: int) -> None:
            part.write(dumps(record) + "\n")
            origins.append((file, line))
            if cfg.dedup != "none":
                keys.append(filters.exact_key(record))
            if cfg.dedup == "near":
                bands.append(filters.minhash_bands(filters.dialogue_text(record)))

        waiting: list[tuple[Trajectory, str, int, bytes]] = []  # for the length stage, rendered BATCH at a time

        def render_waiting() -> None:
            from .render import render_batch

            for (record, file, line, raw), rendered in zip(
                    waiting, render_batch([w[0] for w in waiting], tokenizer, cfg.prompt_format)):
                verdict = check_length(rendered, cfg.seq_len)
                if verdict.ok:
                    keep(record, file, line)
                else:
                    reject("length", verdict, file, line, record.get("id", ""), raw)
            waiting.clear()

        for path in cfg.data:
            for lineno, raw in iter_lines(path):
                records_in += 1
                obj: Any = None
                try:
                    obj = parse_line(raw)
                    record = validate_record(obj)
                except InvalidRecord as e:
                    rid = str(obj.get("id", "")) if isinstance(obj, dict) else ""
                    reject("format", Verdict(False, e.reason, e.detail), path, lineno, rid, raw)
                    continue
                for stage, check in per_record:
                    verdict = check(record)
                    if not verdict.ok:
                        reject(stage, verdict, path, lineno, record.get("id", ""), raw)
                        break
                else:
                    if tokenizer is None:
                        keep(record, path, lineno)
                    else:
                        waiting.append((record, path, lineno, raw))
                        if len(waiting) >= BATCH:
                            render_waiting()
        if waiting:
            render_waiting()
        part.close()

        drops = _duplicates(np.array(keys, np.int64), np.array(bands, np.int64).reshape(-1, filters.BANDS),
                            cfg.dedup)
        tmp = out.with_name(out.name + ".tmp")
        with open(partial, encoding="utf-8") as survivors, open(tmp, "w", encoding="utf-8") as kept_file:
            for i, line in enumerate(survivors):
                if i in drops:
                    reason, first = drops[i]
                    rid = json.loads(line).get("id", "")
                    reject("dedup", Verdict(False, reason, f"same as {origins[first][0]}:{origins[first][1]}"),
                           *origins[i], rid, line.rstrip("\n"))
                else:
                    kept_file.write(line)
        tmp.replace(out)
        partial.unlink()

    kept = len(origins) - len(drops)
    manifest = _manifest(cfg, records_in, kept, rejected, out, rejects_path, index)
    out.with_suffix(".manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def _duplicates(keys: np.ndarray, bands: np.ndarray, dedup: str) -> dict[int, tuple[str, int]]:
    """Survivor index -> (reason, index of the earlier survivor it repeats): exact, then near among the rest, the
    earliest kept; the decisions of the build's `_dedup`, on in-memory keys."""
    drops: dict[int, tuple[str, int]] = {}
    if dedup == "none" or not len(keys):
        return drops
    later, first = filters.duplicates(keys)
    drops.update((int(i), ("duplicate", int(f))) for i, f in zip(later, first))
    if dedup == "near":
        rows = np.setdiff1d(np.arange(len(keys)), later)
        earliest = np.arange(len(rows))  # a near duplicate shares a band with an earlier row: the earliest such
        for b in range(filters.BANDS):
            dup, same = filters.duplicates(bands[rows, b])
            earliest[dup] = np.minimum(earliest[dup], same)
        near = np.flatnonzero(earliest != np.arange(len(rows)))
        drops.update((int(rows[j]), ("near_duplicate", int(rows[earliest[j]]))) for j in near)
    return drops


def _manifest(cfg: FilterConfig, records_in: int, kept: int, rejected: dict[str, Counter], out: Path,
              rejects: Path, index: filters.DecontamIndex | None) -> dict[str, Any]:
    from .render import REASONS as RENDER_REASONS

    skipped = {"semantic": cfg.min_reward is None, "decontam": index is None, "length": cfg.seq_len is None,
               "dedup": cfg.dedup == "none"}
    stages, n = [], records_in
    for stage in STAGES:
        dropped = sum(rejected[stage].values())
        stages.append({"stage": stage, "in": n, "kept": n - dropped, "rejected": dict(rejected[stage].most_common()),
                       "skipped": skipped.get(stage, False)})
        n -= dropped
    total = sum(sum(c.values()) for c in rejected.values())
    assert records_in == kept + total == total + n, "filter books do not reconcile"
    reasons = {r for c in rejected.values() for r in c}
    return {"data": cfg.data, "out": str(out), "rejects": str(rejects), "records_in": records_in, "kept": kept,
            "rejected": total, "stages": stages,
            "reasons": {r: FILTER_REASONS.get(r) or RENDER_REASONS.get(r, "") for r in sorted(reasons)},
            "config": asdict(cfg)}
