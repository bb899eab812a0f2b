"""Work on every chunk or layer a few at once, called off at the first failure."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _CalledOff(Exception):
    """An item not begun because another had failed."""


def each(workers: int, work: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``work(item)`` for every item, ``workers`` at once; the results in order.

    The first failure is raised as soon as the work under way ends: items not yet begun are
    never begun (a pull that failed on one chunk does not go on fetching the others).
    """
    failed = threading.Event()

    def guarded(item: T) -> R:
        if failed.is_set():  # a worker may reach the next item before the pool is cancelled
            raise _CalledOff
        try:
            return work(item)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(guarded, item) for item in items]
        wait(futures, return_when=FIRST_EXCEPTION)
        if failed.is_set():
            for other in futures:
                other.cancel()
            wait(futures)  # the work under way ends; the first real failure is raised
            raise next(
                error
                for f in futures
                if not f.cancelled()
                and (error := f.exception()) is not None
                and not isinstance(error, _CalledOff)
            )
        return [future.result() for future in futures]
