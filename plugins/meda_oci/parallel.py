"""Work on every chunk or layer a few at once, called off at the first failure."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def each(workers: int, work: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``work(item)`` for every item, ``workers`` at once; the results in order.

    The first failure is raised as soon as the work under way ends: items not yet begun are
    never begun (a pull that failed on one chunk does not go on fetching the others).
    """
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(work, item) for item in items]
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future.done() and (error := future.exception()) is not None:
                for other in futures:
                    other.cancel()
                raise error
        return [future.result() for future in futures]
