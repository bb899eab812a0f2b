"""Transfer progress on stderr: a Rich bar on a terminal, a line per 10 % otherwise."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meda_core.state.operations import Progress as ProgressCallback


@contextmanager
def transfer(label: str, quiet: bool = False) -> Iterator[ProgressCallback]:
    if quiet:
        yield lambda done, total: None
    elif sys.stderr.isatty():
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            transient=True,
        ) as bar:
            task = bar.add_task(label, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
    else:
        yield _lines(label)


def _lines(label: str) -> ProgressCallback:
    lock, shown = threading.Lock(), [-1]

    def report(done: int, total: int) -> None:
        tenth = done * 10 // total if total else 10
        with lock:
            if tenth > shown[0]:
                shown[0] = tenth
                print(f"{label}: {tenth * 10}% ({done}/{total} bytes)", file=sys.stderr)

    return report
