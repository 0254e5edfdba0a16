"""Mechanics of the build's data files: the cached line-run index of a JSONL file, Arrow list columns, reading
the `datasets.map` cache files by offset, and the memory and file helpers around them.

Why by offset: packs gather samples from all over the cache files, and every page fault of a memory map maps up to
64 KB around the page touched, so reading through maps brings whole files into RSS. Everything here reads with
plain `read`/`os.preadv` of the bytes asked for, one record batch at a time, and nothing grows with the records
except a few NumPy arrays (`CacheFiles`). `build.py` calls these as steps; it never touches Arrow IPC itself.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TrajtuneError


def list_array(lists: list, dtype):
    """`pa.array(lists, pa.list_(dtype))` of lists or arrays, ~4x faster: the values are gathered by one
    `np.fromiter` (lists), or one `np.concatenate` when some are arrays (a per-turn row: ~4x a joint row's tokens)."""
    import pyarrow as pa

    offsets = np.zeros(len(lists) + 1, np.int32)
    np.cumsum(np.fromiter(map(len, lists), np.int64, len(lists)), out=offsets[1:])
    if any(isinstance(x, np.ndarray) for x in lists):
        values = np.concatenate([np.zeros(0, dtype)] + [np.asarray(x, dtype) for x in lists])
    else:
        values = np.fromiter(itertools.chain.from_iterable(lists), dtype, int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def line_count(path: str, runs) -> int:
    """Lines in `path` (blank ones too) from its `line_run_index`: the last run's first line number, plus the lines
    of that run (one read of at most a run's bytes)."""
    if not len(runs):
        return 0
    last = runs[len(runs) - 1]
    with open(path, "rb") as f:
        f.seek(last["start"])
        buf = f.read(last["end"] - last["start"])
    return last["first_line"] - 1 + buf.count(b"\n") + (not buf.endswith(b"\n"))


def line_run_index(path: str, target: int, fingerprint: str, cache_dir: str | None):
    """`path` cut into runs of whole lines of about `target` bytes (`line_chunks`), as a Dataset of (start, end,
    first_line), cached under the datasets cache by `fingerprint` (file, code and target).

    The map reads each run's bytes straight from the file, so the text is never copied into a cache. Why runs of
    lines and not one row per line: each map batch becomes a record batch of the map's cache file, and reading
    those files through a memory map pulls ~64 KB of RSS per record batch (the kernel maps pages around each
    fault), so their number must not grow with the records; a per-line index would also be 24 bytes a line."""
    import datasets
    import pyarrow as pa
    from datasets import Dataset, Features, Value
    from datasets.arrow_writer import ArrowWriter

    from .trajectory import line_chunks

    root = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "trajtune_chunks"
    target_file = root / f"chunks-{fingerprint[:32]}.arrow"
    if not target_file.is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = target_file.with_name(f"{target_file.name}.{os.getpid()}.tmp")
        features = Features({k: Value("int64") for k in ("start", "end", "first_line")})
        runs = list(line_chunks(path, target))  # 24 bytes per `target` bytes of file
        with ArrowWriter(features=features, path=str(tmp)) as writer:
            writer.write_table(pa.table({k: [r[i] for r in runs] for i, k in enumerate(("start", "end", "first_line"))},
                                        schema=features.arrow_schema))
            writer.finalize()
        os.replace(tmp, target_file)  # atomic: a concurrent or interrupted build never reads half an index
    return Dataset.from_file(str(target_file))


def release_free_memory() -> None:
    """Hand memory that is free but still held by Arrow's allocator and glibc's heap back to the OS.

    After an in-process map, ~50 MB of its freed buffers stay resident, and the per-record arrays of the stages
    after it would pile on top of them (measured: build peak RSS at 1M records 456 -> 420 MiB)."""
    import ctypes
    import ctypes.util

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    libc = ctypes.util.find_library("c")
    if libc and hasattr(ctypes.CDLL(libc), "malloc_trim"):  # glibc only; elsewhere the allocator keeps it
        ctypes.CDLL(libc).malloc_trim(0)


@contextlib.contextmanager
def gc_paused():
    """The cyclic garbage collector off for one batch: the batch allocates thousands of token lists that live until
    its table is built (a per-turn record ~4x a joint one's tokens), and each collection would walk them all again
    (a fifth of a per-turn build). They hold no reference cycles: reference counting frees them all the same."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def file_mentions(path: str, needle: bytes) -> bool:
    """Whether the file's bytes hold `needle` (a scan that stops at the first hit: far cheaper than rendering)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(needle) >= 0


@dataclass
class CacheFiles:
    """Where every processed row lies in the datasets cache files, read by offset (`os.preadv`, `rows_by_batch`).

    Rows are numbered globally (sources in order, then their cache files, then record batches). Record batch b is
    the IPC message at byte `message_at[b]` of file `names[file_of[b]]`, its first row is `first[b]`; row r of it
    holds `n_tokens[r]` tokens that start `local[r]` values after the batch's first one, at byte `ids_at[b]` (int32
    input_ids) and `mask_at[b]` (int8 loss_mask)."""

    names: list[str]
    schema: Any  # pa.Schema of every file
    first: np.ndarray  # first global row of each record batch
    file_of: np.ndarray
    message_at: np.ndarray
    ids_at: np.ndarray
    mask_at: np.ndarray
    local: np.ndarray  # int32: 4 bytes a row

    def batch_of(self, rows: np.ndarray) -> np.ndarray:
        """The record batch of each global row (`first` may repeat where a batch is empty: the last one counts)."""
        return np.searchsorted(self.first, rows, side="right") - 1


def scan_cache_files(processed, scalars: dict[str, Any]) -> tuple[CacheFiles, dict[str, np.ndarray]]:
    """One sequential read of the datasets cache files: the per-row scalars the build decides on (`ok` = kept so
    far, and the columns `scalars` names, with their dtypes), and where each record batch and its tokens lie.

    Why not `ds.data.column(...)` and memory maps: packs gather samples from all over the cache files, and every
    page fault of a memory map maps up to 64 KB around the page touched, so maps bring whole files into RSS.
    Reads hold one record batch at a time and touch only the bytes asked for."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names, first, file_of, message_at, ids_at, mask_at = [], [], [], [], [], []
    total = sum(len(ds) for ds in processed)
    # Filled in place, a record batch at a time: per-batch pieces and their concatenation would hold it twice.
    columns = {k: np.zeros(total, t) for k, t in (("ok", bool), ("local", np.int32), *scalars.items())}
    row, schema = 0, None
    for ds in processed:
        for cache in ds.cache_files:
            name = cache["filename"]
            with pa.OSFile(name, "rb") as f:
                reader = pa.ipc.MessageReader.open_stream(f)
                schema = pa.ipc.read_schema(reader.read_next_message())
                while True:
                    at = f.tell()  # the reader reads no further than the end of each message
                    try:
                        message = reader.read_next_message()
                    except StopIteration:
                        break
                    body_at = f.tell() - message.body.size
                    batch = pa.ipc.read_record_batch(message, schema)
                    rows = slice(row, row + batch.num_rows)
                    if rows.stop > total:
                        row = rows.stop  # more rows than the datasets say: reported below
                        break
                    columns["ok"][rows] = pc.equal(batch.column("reason"), "").to_numpy(zero_copy_only=False)
                    for k in scalars:
                        columns[k][rows] = batch.column(k).to_numpy(zero_copy_only=False)
                    first.append(row)
                    file_of.append(len(names))
                    message_at.append(at)
                    for column, itemsize, out in (("input_ids", 4, ids_at), ("loss_mask", 1, mask_at)):
                        lists = batch.column(column)
                        offsets = lists.offsets.to_numpy()
                        if not np.array_equal(np.diff(offsets), columns["n_tokens"][rows]):
                            raise TrajtuneError(f"the datasets cache file {name} is not what this build wrote; "
                                                "delete the cache directory (--cache-dir) and build again")
                        values = lists.values
                        where = values.buffers()[1].address - message.body.address
                        out.append(body_at + where + itemsize * (values.offset + int(offsets[0])))
                    columns["local"][rows] = offsets[:-1] - offsets[0]  # the same for both columns
                    row += batch.num_rows
            names.append(name)
    if row != total:
        raise TrajtuneError(f"the datasets cache files hold {row}+ rows, not the {total} expected; delete the cache "
                            "directory (--cache-dir) and build again")
    arrays = [np.array(x, np.int64) for x in (first, file_of, message_at, ids_at, mask_at)]
    return CacheFiles(names, schema, *arrays, columns.pop("local")), columns


def rows_by_batch(files: CacheFiles, rows: np.ndarray, columns: list[str]):
    """For each record batch that holds some of `rows` (global row ids, ascending, repeats allowed): (their
    positions in `rows`, a Table of `columns` at them). Plain reads of one record batch at a time, no memory map."""
    import pyarrow as pa

    if not len(rows):
        return
    batch_of = files.batch_of(rows)
    cuts = np.flatnonzero(np.diff(batch_of)) + 1
    opened: dict[int, Any] = {}
    try:
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(rows)]):
            b = int(batch_of[lo])
            f = opened.get(int(files.file_of[b]))
            if f is None:
                f = opened[int(files.file_of[b])] = pa.OSFile(files.names[files.file_of[b]], "rb")
            f.seek(int(files.message_at[b]))
            batch = pa.ipc.read_record_batch(pa.ipc.read_message(f), files.schema)
            table = pa.Table.from_batches([batch]).select(columns)
            yield np.arange(lo, hi), table.take(pa.array(rows[lo:hi] - files.first[b]))
    finally:
        for f in opened.values():
            f.close()


def read_tokens(files: CacheFiles, fds: list[int], rows: np.ndarray, lengths: np.ndarray, skip: np.ndarray | None = None):
    """input_ids (int32) and loss_mask (int8) of `rows` (repeats allowed), back to back in `rows` order: `lengths[k]`
    tokens of row `rows[k]` from its token `skip[k]` (0 when None: a sample of a per-turn row starts inside it);
    `fds` are `files.names` opened."""
    b = files.batch_of(rows)
    local = files.local[rows].astype(np.int64) + (0 if skip is None else skip)
    dest = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    ids = np.empty(int(dest[-1]), np.int32)
    mask = np.empty(int(dest[-1]), np.int8)
    ids_bytes, mask_bytes = memoryview(ids).cast("B"), memoryview(mask).cast("B")
    for fd, n, d, at_ids, at_mask in zip([fds[i] for i in files.file_of[b].tolist()], lengths.tolist(),
                                         dest[:-1].tolist(), (files.ids_at[b] + 4 * local).tolist(),
                                         (files.mask_at[b] + local).tolist()):
        if os.preadv(fd, [ids_bytes[4 * d:4 * (d + n)]], at_ids) != 4 * n or \
                os.preadv(fd, [mask_bytes[d:d + n]], at_mask) != n:
            raise TrajtuneError("a datasets cache file was cut short while the build read it; build again")
    return ids, mask


def write_dataset_dir(tmp: Path, dest: Path, data_file: Path, features: Any, fingerprint: str) -> None:
    """Finish the layout of `Dataset.save_to_disk` (one shard, `data_file` already written in `tmp`) and move `tmp`
    to `dest`, replacing it.

    Written in place because copying the file through save_to_disk would read every token back through a memory
    map, for nothing (and even opening it maps a page per record batch)."""
    import dataclasses
    import json
    import shutil

    from datasets import DatasetInfo

    state = {"_data_files": [{"filename": data_file.name}], "_fingerprint": fingerprint, "_format_columns": None,
             "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}
    (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    info = DatasetInfo(features=features)
    (tmp / "dataset_info.json").write_text(json.dumps(dataclasses.asdict(info), indent=2, sort_keys=True))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
