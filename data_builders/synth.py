"""Synthesis: a policy acts on an environment's tasks; every task ends as a trajectory or a rejection with its reason.

    summary = synthesize(SynthConfig(env="sql", tasks="dev.jsonl", policy="oracle", n=1000, out="data/sql.jsonl"))

What a run promises (`trajtune synth`; the launcher only parses flags):
- Tasks are `env.tasks(split, n, seed)`. `shard="I/N"` keeps those whose stable hash of the id is I mod N, so the
  shards of a Slurm array partition one run's tasks, and `merge` of their outputs equals that run as a set.
- A task's rollout seed comes from (seed, task id), so its trajectory does not depend on the shard, the number of
  workers or what ran before. Workers (processes, each building its own env and policy) return results in task
  order, so `workers=2` writes the same lines as `workers=1`.
- Nothing is lost silently: each task is written to OUT (whatever its reward: `trajtune filter` judges) or to
  REJECTS (`OUT.rejects.jsonl` by default) as `unsolvable` (the oracle raised `envs.Unsolvable`) or `error` (any
  other exception), with the cause. OUT.summary.json counts tasks, solved, the reward histogram and rejections.
- Resumable: OUT and REJECTS are appended to a flushed line at a time. Run again with the same settings and the
  tasks already in OUT or rejected as unsolvable are skipped, errors are retried, and a half-written last line (an
  interrupted write) is cut off with a message. Other settings on an existing OUT are refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import xxhash

from .envs import Environment, Task, make_env
from .errors import TrajtuneError
from .trajectory import Message, dumps

# What must stay the same for a run to resume (n may grow; workers may change).
RESUME_SETTINGS = ("env", "tasks", "policy", "split", "seed", "max_turns", "paraphrase", "shard")
PARAPHRASE_PROMPT = ("Rewrite the user's request below in other words. Keep every name, number, date, quantity and "
                     "constraint exactly as given, and do not answer it. Reply with the rewritten request only.")


@dataclass
class SynthConfig:
    env: str  # a built-in environment name or MODULE:CLASS
    out: str  # trajectories JSONL (appended to)
    tasks: str | None = None  # the environment's tasks file, if it takes one
    policy: str = "oracle"  # a make_policy spec: oracle, random, openai:URL, hf:PATH
    n: int | None = None  # the first n tasks (before sharding)
    split: str | None = "held_in"  # held_in, held_out, or None for both
    seed: int = 0  # seed of the task list and of each rollout
    max_turns: int = 20
    paraphrase: str | None = None  # a policy spec that rewrites each instruction first
    shard: str | None = None  # "I/N"
    workers: int = 1
    rejects: str | None = None  # default OUT.rejects.jsonl
    served_model: str | None = None  # openai: the model name the endpoint serves (default: its only one)
    api_key_env: str | None = None  # openai: the environment variable holding the API key


def companion(out: str | Path, kind: str) -> Path:
    """The file beside OUT a run writes: `companion("d/sql.jsonl", "rejects")` -> d/sql.rejects.jsonl; "summary"
    gives d/sql.summary.json."""
    return Path(out).with_suffix(".summary.json" if kind == "summary" else f".{kind}.jsonl")


def parse_shard(spec: str) -> tuple[int, int]:
    """"I/N" -> (I, N) with 0 <= I < N; TrajtuneError otherwise."""
    i, sep, n = spec.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        raise TrajtuneError(f"--shard {spec}: expected I/N with 0 <= I < N (e.g. --shard 0/4; under Slurm "
                            "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-(N-1))")
    return int(i), int(n)


def shard_of(task_id: str, n: int) -> int:
    """The shard (of n) a task id belongs to: a stable hash, the same on every machine and Python."""
    return xxhash.xxh3_64_intdigest(task_id.encode("utf-8")) % n


def task_seed(seed: int, task_id: str) -> int:
    """The rollout seed of one task: a function of the run seed and the task id only."""
    return xxhash.xxh3_64_intdigest(f"{seed}:{task_id}".encode()) % (1 << 31)


def select_tasks(env: Environment, split: str | None, n: int | None, seed: int,
                 shard: tuple[int, int] | None = None) -> list[Task]:
    """`env.tasks(split, n, seed)`, checked (each has a unique string id), restricted to `shard` if given."""
    tasks = env.tasks(split, n, seed)
    seen: set[str] = set()
    for i, task in enumerate(tasks):
        tid = task.get("id") if isinstance(task, dict) else None
        if not isinstance(tid, str) or not tid:
            raise TrajtuneError(f"environment {env.name!r}: task {i} has no string id (synthesis resumes by it)")
        if tid in seen:
            raise TrajtuneError(f"environment {env.name!r}: task id {tid!r} appears twice; task ids must be unique")
        seen.add(tid)
    if shard is not None:
        tasks = [t for t in tasks if shard_of(t["id"], shard[1]) == shard[0]]
    return tasks


# ---------------------------------------------------------------------------------------------------------
# The files a run appends to


def scan_jsonl(path: Path, log=print, repair: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
    """(byte offset, object) of each line of a JSONL file this module writes, streamed.

    A last line without its newline is what an interrupted write leaves: with `repair`, it is cut off (and said) if
    it is not JSON, and given its newline if it is; without, it is a TrajtuneError. Any other bad line is one too."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        offset = 0
        for lineno, raw in enumerate(f, 1):
            complete = raw.endswith(b"\n")
            if raw.strip():
                try:
                    obj = json.loads(raw)
                    if not isinstance(obj, dict):
                        raise ValueError("not a JSON object")
                except ValueError as e:
                    if complete:
                        raise TrajtuneError(f"{path}:{lineno}: not a JSON object ({e}); this file is not one trajtune "
                                            "synth writes, or was edited: fix or remove that line") from None
                    if not repair:
                        raise TrajtuneError(f"{path}:{lineno}: the last line is half-written (an interrupted run): "
                                            "run that synth again to finish it, then merge") from None
                    log(f"synth: {path}:{lineno}: the last line is half-written (an interrupted run): removed it; "
                        "its task runs again")
                    os.truncate(path, offset)
                    return
                if not complete and repair:
                    with open(path, "ab") as g:
                        g.write(b"\n")
                yield offset, obj
            offset += len(raw)


def record_task_id(record: dict[str, Any]) -> str:
    """The task a trajectory answers: meta.task_id, else its id."""
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    return str(meta.get("task_id") or record.get("id") or "")


def record_reward(record: dict[str, Any]) -> float | None:
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    reward = meta.get("reward")
    return float(reward) if isinstance(reward, (int, float)) and not isinstance(reward, bool) else None


def reward_histogram(rewards: list[float | None]) -> dict[str, int]:
    """Counts per reward bin: "1.0" is exactly solved, "0.k" holds [0.k, 0.k + 0.1), "none" a missing reward."""
    bins: Counter = Counter()
    for r in rewards:
        bins["none" if r is None else "1.0" if r >= 1.0 else f"{max(0, min(9, int(r * 10))) / 10:.1f}"] += 1
    return dict(sorted(bins.items(), reverse=True))


def summarize(out: Path, rejects: Path, task_ids: set[str] | None, log=print) -> dict[str, Any]:
    """The books of OUT + REJECTS over `task_ids` (None: every task the files name): trajectories, solved, reward
    histogram, rejections by reason and cause, and `missing` (tasks in neither; nonzero only after an interruption)."""
    rewards: dict[str, float | None] = {}
    extra = 0
    for _, rec in scan_jsonl(out, log):
        tid = record_task_id(rec)
        if task_ids is None or tid in task_ids:
            rewards.setdefault(tid, record_reward(rec))
        else:
            extra += 1
    rejected: dict[str, dict[str, Any]] = {}
    for _, rej in scan_jsonl(rejects, log):
        tid = str(rej.get("id"))
        if tid not in rewards and (task_ids is None or tid in task_ids):
            rejected[tid] = rej  # a retried error is superseded by its later line
    by = {kind: Counter(r.get("cause", "") for r in rejected.values() if r.get("reason") == kind)
          for kind in ("unsolvable", "error")}
    total = len(task_ids) if task_ids is not None else len(rewards) + len(rejected)
    return {
        "tasks": total, "trajectories": len(rewards),
        "solved": sum(1 for r in rewards.values() if r is not None and r >= 1.0),
        "reward_histogram": reward_histogram(list(rewards.values())),
        "rejected": len(rejected), "rejected_by_reason": dict(Counter(r.get("reason") for r in rejected.values())),
        "unsolvable_by_reason": dict(by["unsolvable"].most_common()), "errors_by_type": dict(by["error"].most_common()),
        "missing": total - len(rewards) - len(rejected), "extra_in_output": extra,
    }


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _lock(f: IO) -> None:
    """Refuse a second run appending to the same file (e.g. a Slurm array whose shards share --out)."""
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise TrajtuneError(f"{f.name} is being written by another trajtune synth; give each run (each shard) its "
                            "own --out") from None


# ---------------------------------------------------------------------------------------------------------
# One task (in this process or a worker)


class _Worker:
    """What a process holds to run tasks: its own environment and policies, built once."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        self.failed = ""  # set when the env or a policy cannot be built: the run stops with it
        try:
            from .agents import make_policy, rollout

            self.rollout = rollout
            self.env = make_env(cfg.env, tasks_file=cfg.tasks)
            self.policy = make_policy(cfg.policy, env=self.env, **endpoint_options(cfg, cfg.policy))
            self.paraphraser = make_policy(cfg.paraphrase, **endpoint_options(cfg, cfg.paraphrase)) \
                if cfg.paraphrase else None
        except Exception as e:  # raised in the parent from `failed`, so a worker pool does not respawn forever
            self.failed = str(e) if isinstance(e, TrajtuneError) else f"{type(e).__name__}: {e}"

    def run(self, task: Task) -> tuple[str, dict[str, Any]]:
        """("ok", trajectory) | ("unsolvable" | "error", rejection) | ("fatal", {"detail"})."""
        if self.failed:
            return "fatal", {"detail": self.failed}
        try:
            if self.paraphraser is not None:
                task = paraphrase(self.paraphraser, task)
            seed = task_seed(self.cfg.seed, task["id"])
            record = self.rollout(self.env, self.policy, task, seed, max_turns=self.cfg.max_turns)
        except Exception as e:  # an env or policy bug, an endpoint down: listed, and retried by a resume
            return "error", self._rejection(task, "error", type(e).__name__, str(e))
        meta = record.setdefault("meta", {})
        if meta.get("end") == "unsolvable":  # the rollout ends an episode the oracle cannot solve, and says why
            why = meta.get("unsolvable") or "unsolvable"
            return "unsolvable", self._rejection(task, "unsolvable", unsolvable_reason(why), why)
        meta.setdefault("env", self.env.name)
        meta.setdefault("task_id", task["id"])
        meta.setdefault("split", task.get("split"))
        meta.setdefault("policy", self.cfg.policy)
        if "reward" not in meta:
            meta["reward"] = float(self.env.reward())
        record.setdefault("id", task["id"])
        return "ok", record

    def _rejection(self, task: Task, reason: str, cause: str, detail: str) -> dict[str, Any]:
        return {"id": task["id"], "env": self.cfg.env, "split": task.get("split"), "stage": "synth", "reason": reason,
                "cause": cause, "detail": detail, "task": task}


def endpoint_options(cfg: SynthConfig, spec: str) -> dict[str, Any]:
    """--served-model / --api-key-env for an openai: policy spec (other policies take neither)."""
    if not spec.startswith("openai:"):
        return {}
    return {k: v for k, v in (("served_model", cfg.served_model), ("api_key_env", cfg.api_key_env)) if v}


def unsolvable_reason(message: str) -> str:
    """The summary's key for an oracle's Unsolvable (the rollout's `meta.unsolvable`): its message up to the first
    colon, e.g. "the reference query fails in SQLite"."""
    return message.split(":", 1)[0].strip()[:80] or "unsolvable"


def paraphrase(policy: Any, task: Task) -> Task:
    """The task with its instruction rewritten by `policy` (the original kept in meta.original_instruction). An empty
    reply keeps the original, marked meta.paraphrased = False."""
    messages: list[Message] = [{"role": "system", "content": PARAPHRASE_PROMPT},
                               {"role": "user", "content": task["instruction"]}]
    text = (policy.act(messages, []).get("content") or "").strip()
    meta = {**(task.get("meta") or {}), "original_instruction": task["instruction"], "paraphrased": bool(text)}
    return {**task, "instruction": text or task["instruction"], "meta": meta}  # type: ignore[typeddict-item]


_WORKER: _Worker | None = None  # a pool process's own


def _init_worker(cfg: SynthConfig) -> None:
    global _WORKER
    _WORKER = _Worker(cfg)


def _run_in_worker(task: Task) -> tuple[str, dict[str, Any]]:
    assert _WORKER is not None
    return _WORKER.run(task)


def _results(cfg: SynthConfig, todo: list[Task]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each task's result, in task order, from this process or `cfg.workers` processes."""
    if cfg.workers <= 1:
        worker = _Worker(cfg)
        try:
            yield from map(worker.run, todo)
        finally:
            if not worker.failed:
                worker.env.close()
        return
    import multiprocessing

    with multiprocessing.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg,)) as pool:
        # imap keeps task order while the processes work ahead; chunksize 1: rollouts are long and uneven.
        yield from pool.imap(_run_in_worker, todo, chunksize=1)


# ---------------------------------------------------------------------------------------------------------
# The run


def settings_of(cfg: SynthConfig) -> dict[str, Any]:
    s = asdict(cfg)
    if s["tasks"]:
        s["tasks"] = str(Path(s["tasks"]).resolve())
    return s


def _check(cfg: SynthConfig) -> None:
    if not cfg.out:
        raise TrajtuneError("give --out FILE.jsonl")
    if cfg.n is not None and cfg.n < 1:
        raise TrajtuneError(f"--n must be at least 1, got {cfg.n}")
    if cfg.workers < 1:
        raise TrajtuneError(f"--workers must be at least 1, got {cfg.workers}")
    if cfg.max_turns < 1:
        raise TrajtuneError(f"--max-turns must be at least 1, got {cfg.max_turns}")
    if cfg.tasks and not Path(cfg.tasks).is_file():
        raise TrajtuneError(f"--tasks {cfg.tasks}: no such file")
    if cfg.shard:
        parse_shard(cfg.shard)


def _check_resume(out: Path, summary_path: Path, settings: dict[str, Any]) -> None:
    """An existing OUT must be this run's own: written by trajtune synth with the same settings."""
    if not out.exists() or out.stat().st_size == 0:
        return
    try:
        before = json.loads(summary_path.read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        raise TrajtuneError(f"--out {out} exists but {summary_path} (the summary trajtune synth writes beside it) is "
                            "missing or unreadable, so it cannot be resumed: give a new --out, or remove it") from None
    changed = [f"{k} {before.get(k)!r} -> {settings[k]!r}" for k in RESUME_SETTINGS if before.get(k) != settings[k]]
    if changed:
        raise TrajtuneError(f"--out {out} holds a run with other settings ({'; '.join(changed)}); resume it with the "
                            "same settings, or give a new --out")


def synthesize(cfg: SynthConfig, log=print, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the synthesis `cfg` describes; return the summary (also written to OUT.summary.json).
    `progress`: show a bar of tasks done (stderr)."""
    from tqdm.auto import tqdm

    started = time.time()
    _check(cfg)
    out, summary_path = Path(cfg.out), companion(cfg.out, "summary")
    rejects = Path(cfg.rejects) if cfg.rejects else companion(cfg.out, "rejects")
    settings = settings_of(cfg)
    _check_resume(out, summary_path, settings)

    env = make_env(cfg.env, tasks_file=cfg.tasks)
    try:
        tasks = select_tasks(env, cfg.split, cfg.n, cfg.seed, parse_shard(cfg.shard) if cfg.shard else None)
    finally:
        env.close()
    if not tasks:
        raise TrajtuneError(f"environment {cfg.env!r} has no tasks for split {cfg.split or 'any'}"
                            + (f" in shard {cfg.shard}" if cfg.shard else "") + "; see `trajtune env tasks`")

    out.parent.mkdir(parents=True, exist_ok=True)
    rejects.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as fo, open(rejects, "a", encoding="utf-8") as fr:
        _lock(fo)
        done = {record_task_id(rec) for _, rec in scan_jsonl(out, log)}
        # Unsolvable tasks stay done; errors are dropped from REJECTS and run again.
        kept_rejects = [rej for _, rej in scan_jsonl(rejects, log) if rej.get("reason") != "error"]
        retried = sum(1 for _ in scan_jsonl(rejects, log)) - len(kept_rejects)
        if retried:
            fr.truncate(0)
            fr.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in kept_rejects)
            fr.flush()
        done |= {str(r.get("id")) for r in kept_rejects}
        todo = [t for t in tasks if t["id"] not in done]
        if len(todo) < len(tasks):
            log(f"synth: resuming {out}: {len(tasks) - len(todo)} of {len(tasks)} tasks done"
                + (f", {retried} errors to retry" if retried else ""))
        _write_json(summary_path, {"settings": settings, "complete": False})

        solved = 0
        results = _results(cfg, todo)
        try:
            with tqdm(total=len(todo), desc=f"synth {cfg.env}", unit=" tasks", disable=not progress) as bar:
                for kind, payload in results:
                    if kind == "fatal":
                        raise TrajtuneError(f"cannot start the rollouts (env {cfg.env}, policy {cfg.policy}): "
                                            f"{payload['detail']}")
                    if kind == "ok":
                        fo.write(dumps(payload) + "\n")
                        fo.flush()
                        solved += (record_reward(payload) or 0.0) >= 1.0
                    else:
                        fr.write(json.dumps(payload, ensure_ascii=False, default=str) + "\n")
                        fr.flush()
                    bar.update(1)
                    bar.set_postfix(solved=solved, refresh=False)
        finally:
            results.close()  # stops the worker pool now, also on an error or Ctrl-C

    seconds = time.time() - started
    summary = {"settings": settings, "complete": True, "out": str(out), "rejects": str(rejects),
               **summarize(out, rejects, {t["id"] for t in tasks}, log),
               "ran": len(todo), "seconds": round(seconds, 2), "tasks_per_second": round(len(todo) / max(seconds, 1e-6), 2)}
    _write_json(summary_path, summary)
    return summary


# ---------------------------------------------------------------------------------------------------------
# Merging shards


def merge(out: str | Path, shards: list[str | Path], log=print) -> dict[str, Any]:
    """Join shard outputs into OUT: one trajectory per task id (the first shard given wins), sorted by task id; their
    REJECTS likewise (tasks with a trajectory dropped). Returns the merged summary (written to OUT.summary.json).

    The shards' summaries must agree on the settings (all but --shard, --n, --workers, --out, --rejects); missing or
    repeated shard numbers and unfinished shards are said."""
    out = Path(out)
    paths = [Path(s) for s in shards]
    for p in paths:
        if not p.is_file():
            raise TrajtuneError(f"shard {p}: no such file")
        if p.resolve() == out.resolve():
            raise TrajtuneError(f"merge: the output {out} is also given as a shard; give a new OUT")
    settings = _check_shard_summaries(paths, log)

    # id -> (shard index, byte offset of its line): lines are copied from the shards, never all held.
    index: dict[str, tuple[int, int]] = {}
    digests: dict[str, int] = {}  # to tell a repeated task from a conflicting one
    conflicts = 0
    for k, p in enumerate(paths):
        for start, rec in scan_jsonl(p, log, repair=False):
            tid = record_task_id(rec)
            digest = xxhash.xxh3_64_intdigest(json.dumps(rec, sort_keys=True).encode())
            if tid in index:
                conflicts += digests[tid] != digest
                continue
            index[tid], digests[tid] = (k, start), digest
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    files = [open(p, "rb") for p in paths]
    try:
        with open(tmp, "wb") as f:
            for tid in sorted(index):
                k, start = index[tid]
                files[k].seek(start)
                f.write(files[k].readline().rstrip(b"\r\n") + b"\n")
    finally:
        for fh in files:
            fh.close()
    tmp.replace(out)

    rejects = companion(out, "rejects")
    merged_rejects: dict[str, dict[str, Any]] = {}
    for p in paths:
        for _, rej in scan_jsonl(companion(p, "rejects"), log, repair=False):
            tid = str(rej.get("id"))
            if tid not in index:
                merged_rejects.setdefault(tid, rej)
    with open(rejects, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(merged_rejects[t], ensure_ascii=False, default=str) + "\n" for t in sorted(merged_rejects))
    if conflicts:
        log(f"synth merge: {conflicts} task ids have different trajectories in two shards; kept the first given")
    summary = {"settings": settings, "complete": True, "out": str(out), "rejects": str(rejects),
               "shards": [str(p) for p in paths], "conflicts": conflicts,
               **summarize(out, rejects, None, log)}
    tasks = settings.pop("_tasks", None)
    if tasks is not None:  # every shard's summary is complete: the shards' tasks, whatever reached the files
        summary["tasks"], summary["missing"] = tasks, tasks - summary["trajectories"] - summary["rejected"]
    _write_json(companion(out, "summary"), summary)
    return summary


def _check_shard_summaries(paths: list[Path], log) -> dict[str, Any]:
    """The settings the shards share (+ "_tasks", their total, when every summary is complete); TrajtuneError when
    two shards come from different runs."""
    summaries = []
    for p in paths:
        try:
            summaries.append(json.loads(companion(p, "summary").read_text()))
        except (OSError, ValueError):
            log(f"synth merge: {p} has no readable {companion(p, 'summary').name}: cannot check it is a shard of "
                "the same run, nor count its tasks")
            summaries.append(None)
    known = [(p, s) for p, s in zip(paths, summaries) if s]
    if not known:
        return {}
    shared = [k for k in RESUME_SETTINGS if k != "shard"]
    first_path, first = known[0]
    for p, s in known[1:]:
        changed = [k for k in shared if s["settings"].get(k) != first["settings"].get(k)]
        if changed:
            raise TrajtuneError(f"merge: {p} and {first_path} are shards of different runs (they differ in "
                                f"{', '.join(changed)}); merge shards of one run")
    specs = [s["settings"].get("shard") for _, s in known]
    if all(specs):
        numbers = [parse_shard(spec) for spec in specs]
        counts = {n for _, n in numbers}
        have = Counter(i for i, _ in numbers)
        if len(counts) == 1:
            n = counts.pop()
            lacking = [i for i in range(n) if i not in have]
            if lacking:
                log(f"synth merge: not among the inputs: shard {', '.join(f'{i}/{n}' for i in lacking)}; their tasks "
                    "are not in OUT")
        repeated = [i for i, c in have.items() if c > 1]
        if repeated:
            log(f"synth merge: shard {', '.join(map(str, repeated))} given more than once")
    unfinished = [str(p) for p, s in known if not s.get("complete")]
    if unfinished:
        log(f"synth merge: {', '.join(unfinished)} did not finish: run them again (they resume) before trusting this")
    settings = {k: first["settings"].get(k) for k in shared}
    if len(known) == len(paths) and not unfinished:
        # Each shard counted once, however often given (the same file twice, or a shard run again elsewhere).
        by_shard = {s["settings"].get("shard") or str(p.resolve()): s["tasks"] for p, s in known}
        settings["_tasks"] = sum(by_shard.values())
    return settings
