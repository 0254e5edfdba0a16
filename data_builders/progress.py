"""A progress bar in records for work that `datasets.map` does a run of lines at a time, maybe in worker processes.

datasets' own bar counts the rows of the dataset mapped, which for the build are runs of lines ("0/2 examples"
for 29 records). Workers add the records they finish to a counter in shared memory, created before the map's
process pool forks them, and a thread of the parent process moves the bar from it. Where workers are not forked
(another start method), they cannot reach the counter and the bar jumps to the end when the map returns.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_counter = None  # multiprocessing.Value('q') while a `record_progress` block runs


def add_done(n: int) -> None:
    """Count `n` records finished (from the parent or a forked worker); a no-op outside `record_progress`."""
    counter = _counter
    if counter is not None:
        with counter.get_lock():
            counter.value += n


@contextmanager
def record_progress(desc: str, total: int, disable: bool = False) -> Iterator[None]:
    """Show a tqdm bar of `total` records while the block runs, moved by `add_done`; hides datasets' own bars.

    On leaving, the bar shows what was counted, or `total` if nothing could be (workers not forked)."""
    import datasets
    from tqdm.auto import tqdm

    global _counter
    _counter = multiprocessing.Value("q", 0)
    stop = threading.Event()
    bar = tqdm(total=total, desc=desc, unit=" records", disable=disable)

    def follow() -> None:
        while not stop.wait(0.2):
            bar.update(_counter.value - bar.n)

    thread = threading.Thread(target=follow, daemon=True)
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    thread.start()
    try:
        yield
        done = _counter.value
        if done:  # `total` counted lines, and blank ones are no records
            bar.total = done
        bar.update((done or total) - bar.n)
    finally:
        stop.set()
        thread.join()
        bar.close()
        _counter = None
        if was_enabled:
            datasets.enable_progress_bars()
