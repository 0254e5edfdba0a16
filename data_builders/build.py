"""`trajtune build`: canonical trajectories -> a packed, masked, mixed token dataset + manifest.json.

Stages, per source file (every drop is counted by reason and written to OUT/dropped.jsonl with file and line):
1. index   the file cut into runs of whole lines of up to 2 MB (`line_run_index`, cached by path+size+mtime);
2. process `datasets.map(num_proc=N)` of the pure per-record function `process_record`, a run of lines at a time
           (one read from the file; BATCH records tokenized in one call, render.per_turn.render_samples):
           parse + validate, no-trained-message filter, decontamination, dedup keys, render + mask (joint, or
           one sample per trained turn: --turns, samples.py), over-long drop/truncate;
           its fingerprint is a hash of everything it depends on, so a re-run reads the cache;
3. dedup   global, across sources in --data order: exact keys, then MinHash bands (`--dedup near`);
4. split   --val-fraction of each source's kept records held out for validation (by record, before packing);
5. mix     each source sampled to its trained-token target (mix.py), deterministic from --seed;
6. pack    best-fit-decreasing on lengths only (pack.py), each turn of a per-turn record a sample of its own
           (`samples.SampleIndex`), then the packs are written chunk by chunk.
Memory: the build holds ~40 bytes a record at its peak (lengths, flags, sample and pack indices as NumPy arrays,
int32 where that is enough; ~130 more with --dedup near), and nothing else that grows with the records: the map
cache files have one record batch per few MB of input, and tokens are read with `os.preadv` a chunk of packs at a
time (`read_tokens`), never memory-mapped, since page faults map whole neighbourhoods of a file into RSS.

Output (read by the trainer; do not change without it):
  OUT/manifest.json   counts, drops by reason, mixture, tokens, packing efficiency + L2 bound, tokenizer, seed...
  OUT/tokenizer/      the tokenizer used (save_pretrained, chat template included)
  OUT/train/          Dataset.save_to_disk, one row per pack: input_ids, labels (-100 = not trained, unshifted),
                      position_ids (restart at 0 per sample), seq_lens (sum == len(input_ids)); all int32, unpadded
  OUT/validation/     the same, only with --val-fraction > 0
  OUT/dropped.jsonl   one line per dropped record: file, line, id, reason, detail
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xxhash

from . import arrow_io, build_out, filters, mix, pack
from .errors import TrajtuneError
from .progress import add_done, record_progress
from .samples import SampleIndex, record_row, truncation_point  # noqa: F401  (truncation_point: part of this API)
from .trajectory import InvalidRecord, iter_lines, parse_line, validate_record

FORMAT_VERSION = 1
PACK_CHUNK = 64  # packs gathered and written per step: bounds the tokens held in memory
BATCH = 1000  # records rendered (and tokenized) together
CHUNK_BYTES = 2 << 20  # most JSONL bytes per map batch (a run of whole lines, see `line_run_index`)
MIN_CHUNK_BYTES = 64 << 10
SCALARS = {"n_tokens": np.int32, "n_trained": np.int32, "truncated": bool, "key": np.int64,  # read per row
           "turn_samples": np.int32}
MAX_LISTED = 1000  # contaminated records listed in the manifest (all of them are in dropped.jsonl)


@dataclass
class BuildConfig:
    data: list[str] = field(default_factory=list, metadata={"help": "sources: PATH:WEIGHT, PATH:xEPOCHS or PATH (= x1)"})
    out: str = field(default="", metadata={"help": "output directory"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer directory (a model's or a saved one)"})
    template: str | None = field(default=None, metadata={"help": "chat template .jinja (replaces the tokenizer's)"})
    prompt_format: str | None = field(default="auto", metadata={"help": "tool prompt format: auto, none, tool-prompt, "
                                                                "react or chatglm3 (render/prompt_formats.py)"})
    template_kwargs: list[str] = field(default_factory=list, metadata={"help": "KEY=VALUE variables for the template"})
    call_syntax: str | None = field(default=None, metadata={"help": "call syntax of a template that ignores tool_calls"})
    reasoning: Literal["auto", "inline", "drop"] = field(default="auto", metadata={
        "help": "reasoning_content: auto (where the template reads it, else inline), inline (<think>...</think> "
                "before the answer) or drop"})
    call_content: str | None = field(default=None, metadata={"help": "text next to a call the template cannot show: drop"})
    turns: Literal["auto", "joint", "per-turn"] = field(default="auto", metadata={
        "help": "per-turn: one sample per trained assistant turn (context = the generation prompt before it); joint: "
                "one per record; auto: joint where the template is prefix-stable, else (and for a record that "
                "fails joint) per-turn"})
    seq_len: int = field(default=4096, metadata={"help": "tokens per pack"})
    overlong: Literal["drop", "truncate"] = field(default="truncate", metadata={
        "help": "a sample longer than seq_len: drop it, or cut it after its last trained message that fits"})
    dedup: Literal["exact", "near", "none"] = field(default="exact", metadata={"help": "duplicate removal"})
    decontam: list[str] = field(default_factory=list, metadata={"help": "eval files (JSON/JSONL) to decontaminate against"})
    decontam_n: int = field(default=13, metadata={"help": "word n-gram length for decontamination"})
    val_fraction: float = field(default=0.0, metadata={"help": "fraction of each source's records held out"})
    seed: int = field(default=0, metadata={"help": "seed of mixture sampling, validation split and pack order"})
    num_proc: int = field(default=1, metadata={"help": "processes for rendering (datasets.map num_proc)"})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache directory (default: HF's)"})


# ---------------------------------------------------------------------------------------------------------
# The per-record function (runs inside datasets.map workers)


@dataclass(frozen=True)
class RecordJob:
    """Everything `process_record` needs besides the record: pickled once to each worker."""

    tokenizer: Any
    prompt_format: str | None
    seq_len: int
    overlong: str
    dedup: str
    decontam: filters.DecontamIndex | None
    options: Any = None  # render.RenderOptions (template kwargs, call syntax, reasoning, call content)
    turns: str = "auto"


def process_record(raw: bytes, job: RecordJob) -> dict[str, Any]:
    """One JSONL line -> the processed row: tokens + mask + keys, or a drop reason and detail.

    Pure: the same line and job give the same row. The row's `reason` is "" for a kept record.
    """
    return process_records([raw], job)[0]


def process_records(raws: list[bytes], job: RecordJob) -> list[dict[str, Any]]:
    """`process_record` of each line, with the renders of the batch tokenized together (`render_samples`)."""
    from .render import RenderError
    from .render.per_turn import render_samples

    rows, records = zip(*(_before_render(raw, job) for raw in raws)) if raws else ((), ())
    rows = list(rows)
    todo = [i for i, r in enumerate(records) if r is not None]
    for i, got in zip(todo, render_samples([records[i] for i in todo], job.tokenizer, job.prompt_format, job.turns,
                                                  job.options)):
        # a Rendered's samples -> tokens, mask and sample lengths (over-long ones handled), or the drop reason
        rows[i] = {**rows[i], **({"reason": got.reason, "detail": got.detail} if isinstance(got, RenderError)
                                 else record_row(got, job.seq_len, job.overlong))}
    return rows


def _before_render(raw: bytes, job: RecordJob) -> tuple[dict[str, Any], Any]:
    """(row, validated record to render), or (row with its drop reason, None)."""
    row: dict[str, Any] = {"id": "", "reason": "", "detail": "", "input_ids": [], "loss_mask": [], "n_tokens": 0,
                           "n_trained": 0, "truncated": False, "key": 0, "bands": [], "sample_lens": [],
                           "turn_samples": 0}
    try:
        record = validate_record(parse_line(raw))
    except InvalidRecord as e:
        return {**row, "reason": e.reason, "detail": e.detail}, None
    row["id"] = record.get("id", "")
    if not filters.has_trained_message(record):
        return {**row, "reason": "no_trained_token", "detail": "no assistant message is trained"}, None
    if job.decontam is not None:
        hits = job.decontam.overlaps(record)
        if hits:
            return {**row, "reason": "contaminated", "detail": "overlaps eval items: " + ", ".join(hits[:20])}, None
    if job.dedup != "none":
        row["key"] = filters.exact_key(record)
    if job.dedup == "near":
        row["bands"] = filters.minhash_bands(filters.dialogue_text(record))
    return row, record


def _process_chunks(batch: dict[str, list], job: RecordJob, path: str):
    """A map batch of runs of lines (see `line_run_index`) -> the processed rows of all their non-blank lines, as one
    Arrow table of `_features()` (written as one record batch of the cache file).

    Each run is one read from the JSONL file; its records are rendered BATCH at a time."""
    import pyarrow as pa

    from .trajectory import split_lines

    tables = []
    with open(path, "rb") as f:
        for start, end, first in zip(batch["start"], batch["end"], batch["first_line"]):
            f.seek(start)
            buf = f.read(end - start)
            numbers, starts, ends = split_lines(buf, first)
            for i in range(0, len(numbers), BATCH):
                raws = [buf[s:e].rstrip(b"\r\n") for s, e in zip(starts[i:i + BATCH].tolist(), ends[i:i + BATCH].tolist())]
                with arrow_io.gc_paused():
                    tables.append(_rows_table(process_records(raws, job), numbers[i:i + BATCH]))
                add_done(len(raws))
    return pa.concat_tables(tables) if tables else _features().arrow_schema.empty_table()


def _rows_table(rows: list[dict[str, Any]], lines: np.ndarray):
    """Processed rows and their line numbers -> an Arrow table of `_features()`."""
    import pyarrow as pa

    col = {k: [r[k] for r in rows] for k in rows[0]}
    return pa.table({
        **{k: pa.array(col[k], pa.string()) for k in ("id", "reason", "detail")},
        "input_ids": arrow_io.list_array(col["input_ids"], np.int32), "loss_mask": arrow_io.list_array(col["loss_mask"], np.int8),
        "n_tokens": pa.array(col["n_tokens"], pa.int32()), "n_trained": pa.array(col["n_trained"], pa.int32()),
        "truncated": pa.array(col["truncated"], pa.bool_()), "key": pa.array(col["key"], pa.int64()),
        "bands": pa.array(col["bands"], pa.list_(pa.int64())), "line": pa.array(lines, pa.int64()),
        "sample_lens": arrow_io.list_array(col["sample_lens"], np.int32),
        "turn_samples": pa.array(col["turn_samples"], pa.int32()),
    }, schema=_features().arrow_schema)


# ---------------------------------------------------------------------------------------------------------
# Fingerprints


def _hash(*parts: Any) -> str:
    return xxhash.xxh3_128_hexdigest(json.dumps(parts, sort_keys=True, default=str).encode())


def file_fingerprint(path: str | Path) -> str:
    st = os.stat(path)
    return _hash(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def tokenizer_hash(tokenizer: Any) -> str:
    """Hash of the vocabulary, merges, special tokens and chat template: what the token ids depend on."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return _hash(body, tokenizer.chat_template, getattr(tokenizer, "all_special_tokens", []))[:16]


def _code_hash(here: Path | None = None) -> str:
    """The source of every file below data_builders/ (.py and the built-in .jinja prompt formats, in every
    subfolder: render, filters, validation, this file...) and the transformers version (its Jinja environment
    renders templates): an edit anywhere invalidates the caches."""
    import transformers

    here = here or Path(__file__).resolve().parent
    files = sorted(p for p in here.rglob("*") if p.suffix in (".py", ".jinja") and "__pycache__" not in p.parts)
    return _hash(transformers.__version__, *(f"{p.relative_to(here)}\n{p.read_text()}" for p in files))


# ---------------------------------------------------------------------------------------------------------
# The build


def _features():
    from datasets import Features, Sequence, Value

    return Features({"id": Value("string"), "reason": Value("string"), "detail": Value("string"),
                     "input_ids": Sequence(Value("int32")), "loss_mask": Sequence(Value("int8")),
                     "n_tokens": Value("int32"), "n_trained": Value("int32"), "truncated": Value("bool"),
                     "key": Value("int64"), "bands": Sequence(Value("int64")), "line": Value("int64"),
                     "sample_lens": Sequence(Value("int32")), "turn_samples": Value("int32")})


def _pack_features():
    from datasets import Features, Sequence, Value

    return Features({k: Sequence(Value("int32")) for k in ("input_ids", "labels", "position_ids", "seq_lens")})


def _load_tokenizer(cfg: BuildConfig):
    from .tokenizer import load_tokenizer

    return load_tokenizer(cfg.tokenizer, cfg.template)


def _check(cfg: BuildConfig) -> list[mix.SourceSpec]:
    if not cfg.data:
        raise TrajtuneError("give at least one --data PATH[:WEIGHT|:xEPOCHS]")
    if not cfg.out:
        raise TrajtuneError("give --out DIR")
    if cfg.seq_len < 16:
        raise TrajtuneError(f"--seq-len must be at least 16, got {cfg.seq_len}")
    if not 0 <= cfg.val_fraction < 1:
        raise TrajtuneError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    specs = [mix.parse_source_spec(s) for s in cfg.data]
    for s in specs:
        if not Path(s.path).is_file():
            hint = "; the syntax is PATH, PATH:WEIGHT (WEIGHT > 0) or PATH:xEPOCHS" if ":" in s.path else ""
            raise TrajtuneError(f"--data {s.path}: no such file{hint}")
        if next(iter_lines(s.path), None) is None:
            raise TrajtuneError(f"--data {s.path}: the file has no records (only blank lines); remove it from --data")
    if len({str(Path(s.path).resolve()) for s in specs}) < len(specs):
        raise TrajtuneError("the same file is given twice in --data; give it once with the weight or epochs you want")
    return specs


def build(cfg: BuildConfig, log=print) -> dict[str, Any]:
    """Run the whole build into cfg.out and return the manifest (also written to OUT/manifest.json).

    If OUT holds a build of the same inputs, config, tokenizer and code, it is kept as is (near instant).
    """
    started = time.time()
    specs = _check(cfg)
    tok = _load_tokenizer(cfg)
    tok_hash = tokenizer_hash(tok)
    decontam = filters.DecontamIndex(cfg.decontam, cfg.decontam_n) if cfg.decontam else None
    code = _code_hash()  # source of data_builders + transformers version: every cache below keys on it
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "num_proc", "cache_dir")}
    build_key = _hash(FORMAT_VERSION, settings, [file_fingerprint(s.path) for s in specs],
                      [file_fingerprint(f) for f in cfg.decontam], tok_hash, code)
    out = Path(cfg.out)
    previous = build_out.previous_build(out)
    if previous is not None and previous.get("build_key") == build_key and (out / "train").is_dir():
        log(f"build: {out} is up to date (same inputs, config, tokenizer and code)")
        return previous
    # Everything is written beside OUT and moved into place at the end: a failed or interrupted build leaves the
    # previous dataset whole, and a trainer never reads half of a new one.
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)

    from .render.options import RenderOptions, parse_template_kwargs
    from .render.prompt_formats import announce_prompt_format, resolve_prompt_format
    from .render.recipe import reasoning_notice

    options = RenderOptions(parse_template_kwargs(cfg.template_kwargs), cfg.call_syntax, cfg.reasoning or "auto",
                            cfg.call_content)
    prompt_format = resolve_prompt_format(tok, cfg.prompt_format, options)
    if note := announce_prompt_format(tok, cfg.prompt_format, options):
        print(f"build: {note}", file=sys.stderr)
    reasoning_seen = any(arrow_io.file_mentions(s.path, b'"reasoning_content"') for s in specs)
    if reasoning_seen and (note := reasoning_notice(tok, prompt_format, options)):
        print(f"build: {note}", file=sys.stderr)
    job = RecordJob(tok, cfg.prompt_format, cfg.seq_len, cfg.overlong, cfg.dedup, decontam, options, cfg.turns)
    job_key = _hash(FORMAT_VERSION, tok_hash, cfg.prompt_format, repr(options), cfg.turns, cfg.seq_len, cfg.overlong,
                    cfg.dedup,
                    decontam and [cfg.decontam_n, [file_fingerprint(f) for f in cfg.decontam]], code)
    processed = []
    for s in specs:
        fp = file_fingerprint(s.path)
        # >= 32 runs per process, so that processes finish within ~3% of each other (datasets gives each a
        # contiguous share of the runs); at most CHUNK_BYTES, so a worker holds a few MB of records at a time.
        target = min(CHUNK_BYTES, max(MIN_CHUNK_BYTES, os.path.getsize(s.path) // (32 * cfg.num_proc)))
        chunks = arrow_io.line_run_index(s.path, target, _hash(fp, code, target), cfg.cache_dir)
        with record_progress(f"render {Path(s.path).name}", arrow_io.line_count(s.path, chunks)):
            ds = chunks.map(_process_chunks, batched=True, batch_size=1, fn_kwargs={"job": job, "path": s.path},
                            num_proc=cfg.num_proc if cfg.num_proc > 1 and len(chunks) > 1 else None,
                            features=_features(), remove_columns=chunks.column_names, writer_batch_size=1 << 30,
                            new_fingerprint=_hash(fp, job_key, target)[:32])
        processed.append(ds)
    del ds, chunks

    # ---- drops: per-record reasons, then global dedup over the kept ones
    names = [s.path for s in specs]
    sizes = [len(ds) for ds in processed]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    files, columns = arrow_io.scan_cache_files(processed, SCALARS)
    del processed  # their memory maps: everything below reads the cache files by offset (see CacheFiles)
    arrow_io.release_free_memory()
    ok = columns["ok"]
    dropped_in_map = ~ok  # before dedup drops more
    keys = columns.pop("key")
    dedup_drops = _dedup(files, ok, keys, near=cfg.dedup == "near") if cfg.dedup != "none" else []
    del keys  # 8 bytes a record, needed no more

    stage.mkdir(parents=True)
    contaminated: list[dict] = []
    dropped_by_source = _write_dropped(stage / "dropped.jsonl", files, names, offsets, dropped_in_map, dedup_drops,
                                       contaminated)
    del dropped_in_map, dedup_drops
    turn_samples = columns.pop("turn_samples")  # > 0: a per-turn record, with that many samples
    per_turn = ok & (turn_samples > 0)
    index = SampleIndex.read(files, np.flatnonzero(ok & (turn_samples > 1)))
    from .render.recipe import build_recipe

    decided = _template_turns(tok, cfg)
    turns = {"mode": cfg.turns, "template": decided, "per_turn_records": int(per_turn.sum()),
             "per_turn_samples": int(turn_samples[per_turn].sum(dtype=np.int64)),
             "extra_context_tokens": index.extra_context_tokens(columns["n_tokens"])}
    del turn_samples, per_turn

    # ---- validation split, mixture
    rng = np.random.default_rng(cfg.seed)
    # int32 and bool columns, int32 row numbers: the build holds a few bytes a record (sums upcast to int64).
    n_tokens, n_trained, truncated = columns["n_tokens"], columns["n_trained"], columns["truncated"]
    row_type = np.int32 if len(ok) < 2**31 else np.int64
    train_rows, val_rows = [], []
    for i in range(len(specs)):
        rows = np.flatnonzero(ok[offsets[i]:offsets[i + 1]]).astype(row_type) + row_type(offsets[i])
        n_val = int(round(cfg.val_fraction * len(rows)))
        held = np.zeros(len(rows), dtype=bool)
        held[rng.permutation(len(rows))[:n_val]] = True
        val_rows.append(rows[held])
        train_rows.append(rows[~held])
        del rows, held
    available = [int(n_trained[r].sum(dtype=np.int64)) for r in train_rows]
    targets = mix.token_targets(specs, available)
    sampled = []
    for i, t in enumerate(targets):  # each source's row list is replaced by its sample, so one of them is held
        sampled.append(train_rows[i][mix.sample_to_target(n_trained[train_rows[i]], t, np.random.default_rng([cfg.seed, i]))])
        train_rows[i] = None
    # What the manifest needs of the samples, so that only their concatenation is held while packing.
    sampled_stats = [(len(x), int(n_tokens[x].sum(dtype=np.int64)), int(n_trained[x].sum(dtype=np.int64))) for x in sampled]
    train_samples = np.concatenate(sampled) if len(sampled) > 1 else sampled[0]
    del sampled, train_rows

    # ---- pack + write
    total_dropped: Counter = Counter()
    for d in dropped_by_source:
        total_dropped.update(d)
    if not len(train_samples):
        raise TrajtuneError(_nothing_to_train(cfg, int(sum(sizes)), total_dropped, stage / "dropped.jsonl"))
    tok.save_pretrained(str(stage / "tokenizer"))
    train_stats = _pack_and_write(files, index, train_samples, n_tokens, n_trained, cfg, stage / "train", rng,
                                  _hash(build_key, "train")[:16], log)
    val_stats = None
    val_samples = np.concatenate(val_rows)
    if cfg.val_fraction > 0:
        val_stats = _pack_and_write(files, index, val_samples, n_tokens, n_trained, cfg, stage / "validation", rng,
                                    _hash(build_key, "validation")[:16], log)

    # ---- manifest
    sampled_trained = [trained for _, _, trained in sampled_stats]
    total_trained = sum(sampled_trained) or 1
    sources = []
    for i, s in enumerate(specs):
        kept = int(ok[offsets[i]:offsets[i + 1]].sum())
        dropped = dropped_by_source[i]
        sources.append({
            "path": s.path, "spec": str(s), "weight": s.weight, "epochs": s.epochs,
            "records_in": sizes[i], "kept": kept, "dropped": sum(dropped.values()), "dropped_by_reason": dict(dropped),
            "truncated": int(truncated[offsets[i]:offsets[i + 1]][ok[offsets[i]:offsets[i + 1]]].sum()),
            "validation_records": len(val_rows[i]), "available_trained_tokens": available[i],
            "target_trained_tokens": round(targets[i]), "sampled_records": sampled_stats[i][0],
            "sampled_tokens": sampled_stats[i][1], "sampled_trained_tokens": sampled_trained[i],
            "effective_epochs": sampled_trained[i] / available[i] if available[i] else 0.0,
            "effective_mixture": sampled_trained[i] / total_trained,
        })
    manifest = {
        "format_version": FORMAT_VERSION, "build_key": build_key,
        # What training reads (the packs' tokens and labels, the tokenizer, seq_len): the data's identity for
        # resume and export. Unlike this file's bytes, it does not change when the same data is built again.
        "data_sha256": hashlib.sha256(json.dumps([train_stats.pop("sha256"), val_stats and val_stats.pop("sha256"),
                                                  tok_hash, cfg.seq_len]).encode()).hexdigest(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build_seconds": round(time.time() - started, 2),
        "config": dataclasses.asdict(cfg),
        "tokenizer": {"name": getattr(tok, "name_or_path", "") or (cfg.template or ""), "hash": tok_hash,
                      "vocab_size": len(tok), "template": cfg.template, "eos_token": tok.eos_token},
        # The prompt format records were rendered with ("auto" resolved: what the engine and export must use).
        "seq_len": cfg.seq_len, "prompt_format": prompt_format, "turns": turns, "seed": cfg.seed,
        # How records became text (render/recipe.py): train copies it into the export, whose chat template follows it.
        "recipe": build_recipe(tok, prompt_format, decided or cfg.turns, options, reasoning_seen).to_dict(),
        "records_in": int(sum(sizes)), "kept": int(ok.sum()), "dropped": sum(total_dropped.values()),
        "dropped_by_reason": dict(total_dropped), "truncated": int(truncated[ok].sum()),
        "decontamination": decontam and {"files": decontam.files, "n": decontam.n,
                                         "contaminated": total_dropped.get("contaminated", 0),
                                         "records": contaminated},
        "sources": sources,
        "mixture": {s.path: src["effective_mixture"] for s, src in zip(specs, sources)},
        "train": train_stats, "validation": val_stats,
    }
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    build_out.replace_dir(stage, out)
    log(f"build: wrote {out}")
    return manifest


def _nothing_to_train(cfg: BuildConfig, records_in: int, dropped: Counter, listing: Path) -> str:
    """The error of a build that would write no training pack: what dropped the records, and what fixes each."""
    reasons = ", ".join(f"{reason} {n}" for reason, n in dropped.most_common())
    fixes = []
    if dropped.get("overlong"):
        fixes.append(f"raise --seq-len (now {cfg.seq_len})" + (", or keep records cut after their last trained "
                     "message that fits with --overlong truncate" if cfg.overlong == "drop" else ""))
    if dropped.get("contaminated"):
        fixes.append("check the --decontam files: every record overlaps them")
    if dropped.get("no_trained_token"):
        fixes.append("mark assistant messages as trained (`loss` true, or leave it out)")
    other = set(dropped) - {"overlong", "contaminated", "no_trained_token", "duplicate", "near_duplicate"}
    if other:
        fixes.append("run `trajtune convert` on the input to see what is invalid, record by record")
    if not records_in:
        fixes.append("the --data files hold no records")
    return (f"no training pack to write: {records_in} records in, 0 kept for training"
            + (f" (dropped: {reasons})" if reasons else "")
            + ("; with --val-fraction every kept record went to validation, lower it" if not dropped and records_in else "")
            + (f". Fix: {'; '.join(fixes)}" if fixes else "")
            + f". Every dropped record is listed with its file, line and reason in {listing}")


def _dedup(files: arrow_io.CacheFiles, ok: np.ndarray, keys: np.ndarray, near: bool) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Drop exact (and near) duplicates among the kept rows (`ok`, updated in place), keeping the first in --data
    order. Returns (reason, dropped rows, the rows they repeat) for each kind. `keys`: every row's exact key."""
    dup, first = filters.duplicates(keys, among=ok)
    ok[dup] = False
    drops = [("duplicate", dup, first)]
    if near:
        rows = np.flatnonzero(ok)
        # Every kept row has exactly BANDS band keys, so the kept rows' flattened lists make a (kept, BANDS) matrix.
        bands = np.zeros((len(rows), filters.BANDS), np.int64)
        for at, table in arrow_io.rows_by_batch(files, rows, ["bands"]):
            bands[at] = table.column("bands").combine_chunks().flatten().to_numpy().reshape(-1, filters.BANDS)
        earliest = np.arange(len(rows))  # a near duplicate shares a band with an earlier row: the earliest such
        for b in range(filters.BANDS):
            later, first = filters.duplicates(bands[:, b])
            earliest[later] = np.minimum(earliest[later], first)
        near_dup = np.flatnonzero(earliest != np.arange(len(rows)))
        ok[rows[near_dup]] = False
        drops.append(("near_duplicate", rows[near_dup], rows[earliest[near_dup]]))
    return drops


def _write_dropped(path: Path, files: arrow_io.CacheFiles, names: list[str], offsets: np.ndarray, dropped_in_map: np.ndarray,
                   dedup_drops: list[tuple[str, np.ndarray, np.ndarray]], contaminated: list) -> list[Counter]:
    """Write every dropped record (file, line, id, reason, detail), in file order, and count drops per source.

    Rows come from `dropped_in_map` (their reason and detail are in the cache) and `dedup_drops` (from `_dedup`;
    the detail names the kept record as FILE:LINE). Read a record batch at a time and held as arrays of the dropped
    rows only, so any number of drops streams. The first MAX_LISTED contaminated records are also appended to
    `contaminated` for the manifest."""
    # The dedup drops, sorted by row: their reason (index into dedup_drops) and the row they repeat.
    dup_rows = np.concatenate([np.zeros(0, np.int64)] + [rows for _, rows, _ in dedup_drops])
    dup_kind = np.concatenate([np.zeros(0, np.int64)] + [np.full(len(rows), k) for k, (_, rows, _) in enumerate(dedup_drops)])
    dup_same = np.concatenate([np.zeros(0, np.int64)] + [same for _, _, same in dedup_drops])
    order = np.argsort(dup_rows, kind="stable")
    dup_rows, dup_kind, dup_same = dup_rows[order], dup_kind[order], dup_same[order]
    same_line = np.zeros(len(dup_same), np.int64)  # the kept record's line, read in row order
    order = np.argsort(dup_same, kind="stable")
    for at, table in arrow_io.rows_by_batch(files, dup_same[order], ["line"]):
        same_line[order[at]] = table.column("line").to_numpy()
    same_source = np.searchsorted(offsets, dup_same, side="right") - 1

    counts = [Counter() for _ in names]
    dropped = np.union1d(np.flatnonzero(dropped_in_map), dup_rows)
    with open(path, "w", encoding="utf-8") as f:
        for at, table in arrow_io.rows_by_batch(files, dropped, ["line", "id", "reason", "detail"]):
            rows = dropped[at]
            sources = (np.searchsorted(offsets, rows, side="right") - 1).tolist()
            d = np.minimum(np.searchsorted(dup_rows, rows), max(len(dup_rows) - 1, 0))
            is_dup = (dup_rows[d] == rows).tolist() if len(dup_rows) else [False] * len(rows)
            for entry, source, dup, j in zip(table.to_pylist(), sources, is_dup, d.tolist()):
                if dup:
                    entry["reason"] = dedup_drops[dup_kind[j]][0]
                    entry["detail"] = f"same as {names[same_source[j]]}:{same_line[j]}"
                counts[source][entry["reason"]] += 1
                if entry["reason"] == "contaminated" and len(contaminated) < MAX_LISTED:
                    contaminated.append({"file": names[source], "line": entry["line"], "id": entry["id"],
                                         "overlaps": entry["detail"].removeprefix("overlaps eval items: ")})
                f.write(json.dumps({"file": names[source], **entry}, ensure_ascii=False) + "\n")
    return counts


def _template_turns(tok, cfg: BuildConfig) -> str | None:
    """How --turns auto renders this template ("joint" or "per-turn"); None when --turns names it."""
    from .render.per_turn import template_turns

    return template_turns(tok, cfg.prompt_format) if cfg.turns == "auto" else None


def _pack_and_write(files: arrow_io.CacheFiles, index: SampleIndex, rows: np.ndarray, n_tokens, n_trained, cfg: BuildConfig,
                    dest: Path, rng, fingerprint: str, log):
    """Pack the samples of `rows` (global row ids, repeats allowed; a per-turn row's turns are samples of their own,
    `index`) and save the packs to `dest` as a Dataset with `fingerprint`; return their statistics."""
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter
    from tqdm.auto import tqdm

    samples, skip, lengths = index.expand(rows, n_tokens)
    bound = pack.l2_lower_bound(lengths, cfg.seq_len)
    bin_of, n_bins = pack.pack_best_fit_decreasing(lengths, cfg.seq_len)
    # Pack order is shuffled (seeded) so a trainer reading in order does not see all long samples first.
    bin_of = rng.permutation(n_bins).astype(np.int32)[bin_of] if n_bins else bin_of  # each sample's pack, in order
    order = np.argsort(bin_of, kind="stable")  # samples pack by pack
    per_pack = np.bincount(bin_of, minlength=n_bins)
    del bin_of
    starts = np.concatenate([[0], np.cumsum(per_pack)])

    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    data_file = tmp / "data-00000-of-00001.arrow"
    fds = [os.open(name, os.O_RDONLY) for name in files.names]
    digest = hashlib.sha256()  # of the tokens, labels and sample lengths of every pack, in order
    # Each chunk is hashed and written by a thread while the next one is read and packed (both release the GIL, and
    # a per-turn build writes ~4x a joint one's tokens); one chunk at a time, in order.
    writing = None
    try:  # (a native file: written by Arrow itself, not through a Python file a copy of each batch at a time)
        with pa.OSFile(str(data_file), "wb") as sink, ArrowWriter(features=_pack_features(), stream=sink) as writer, \
                concurrent.futures.ThreadPoolExecutor(1) as pool:

            def write(columns: dict) -> None:
                # The packs' tokens, labels and sample lengths with the packs' bounds; position_ids follow from these.
                for values in (*(columns[k][0] for k in ("input_ids", "labels", "seq_lens")), columns["seq_lens"][1]):
                    digest.update(memoryview(np.ascontiguousarray(values, dtype=np.int32)).cast("B"))
                writer.write_table(pa.table({name: pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
                                             for name, (values, offsets) in columns.items()}))

            for c0 in tqdm(range(0, n_bins, PACK_CHUNK), desc=f"write {dest.name}", unit="chunk", disable=n_bins == 0):
                c1 = min(c0 + PACK_CHUNK, n_bins)
                picked = order[starts[c0]:starts[c1]]
                ids, mask = arrow_io.read_tokens(files, fds, samples[picked], lengths[picked],
                                                 None if skip is None else skip[picked])
                columns = pack.pack_columns(ids, mask, lengths[picked], per_pack[c0:c1])
                if writing is not None:
                    writing.result()  # (raises what the write raised)
                writing = pool.submit(write, columns)
            if writing is not None:
                writing.result()
            writer.finalize()
    finally:
        for fd in fds:
            os.close(fd)
    arrow_io.write_dataset_dir(tmp, dest, data_file, _pack_features(), fingerprint)

    total = int(lengths.sum())
    stats = {"records": len(rows), "samples": len(samples), "packs": n_bins, "total_tokens": total,
             "trained_tokens": int(n_trained[rows].sum(dtype=np.int64)),
             "packing_efficiency": total / (n_bins * cfg.seq_len) if n_bins else 0.0, "l2_bound_packs": bound,
             "efficiency_upper_bound": total / (bound * cfg.seq_len) if bound else 0.0, "sha256": digest.hexdigest()}
    log(f"build: {dest.name}: {stats['samples']} samples -> {n_bins} packs of {cfg.seq_len}, efficiency "
        f"{stats['packing_efficiency']:.4f} (L2 bound: {bound} packs, efficiency <= {stats['efficiency_upper_bound']:.4f})")
    return stats
