"""Caps on requests held open (operation waits, event streams): in total and per client."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request

from meda_api.ratelimit import client_of
from meda_core.errors import RateLimited

RETRY_AFTER_SECONDS = 5
T = TypeVar("T")


class HeldRequests:
    """At most ``total`` requests held open at once, and ``per_client`` by one client.

    Beyond either: 429 ``RATE_LIMITED`` with ``Retry-After``, before anything is held.
    """

    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()

    def hold(self, request: Request) -> Callable[[], None]:
        """Take a place for ``request``'s client; returns what gives it back (once)."""
        client = client_of(request.scope)
        with self._lock:
            if sum(self._held.values()) >= self.total:
                raise self._refusal(f"at most {self.total} at once (MEDA_MAX_WAITS)")
            if self._held[client] >= self.per_client:
                raise self._refusal(
                    f"at most {self.per_client} per client (MEDA_MAX_WAITS_PER_CLIENT)"
                )
            self._held[client] += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self._held[client] -= 1
                    if not self._held[client]:
                        del self._held[client]

        return release

    def _refusal(self, limit: str) -> RateLimited:
        return RateLimited(
            f"too many waits and event streams open: {limit}; retry in {RETRY_AFTER_SECONDS}s",
            retry_after=RETRY_AFTER_SECONDS,
        )


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None as soon as the client goes away (``work`` is cancelled)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, gone):
            pending.cancel()  # nothing to a task that ended
        await asyncio.gather(task, gone, return_exceptions=True)
    return None if task.cancelled() else task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
