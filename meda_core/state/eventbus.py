"""In-process fan-out of events (VM lifecycle, operations) to any number of listeners."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

MAX_BACKLOG = 1000
log = logging.getLogger(__name__)


#: What gives an event its id: it writes the event to the journal.
Journal = Callable[[str, dict[str, Any]], int]


class EventBus:
    """Thread-safe: publish from any thread; each subscriber has its own bounded queue.

    With a ``journal``, every event is written there first and carries the id it got.
    """

    def __init__(self, journal: Journal | None = None) -> None:
        self._journal = journal
        self._lock = threading.Lock()
        self._queues: list[queue.Queue[dict[str, Any]]] = []
        self._callbacks: list[Callable[[dict[str, Any]], None]] = []

    def subscribe(self) -> queue.Queue[dict[str, Any]]:
        listener: queue.Queue[dict[str, Any]] = queue.Queue(MAX_BACKLOG)
        with self._lock:
            self._queues.append(listener)
        return listener

    def unsubscribe(self, listener: queue.Queue[dict[str, Any]]) -> None:
        with self._lock:
            if listener in self._queues:
                self._queues.remove(listener)

    def on_publish(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``callback`` with each event from now on, in the publishing thread (so it
        must be quick: it wakes a waiter); returns what stops the calls."""
        with self._lock:
            self._callbacks.append(callback)

        def stop() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return stop

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        event: dict[str, Any] = {"event": kind, "data": data}
        with self._lock:
            # Under the lock: listeners see events in the order of their ids.
            if self._journal is not None:
                try:
                    event["id"] = self._journal(kind, data)
                except Exception:  # the work the event tells of happened all the same
                    log.exception("could not journal a %s event", kind)
            listeners, callbacks = list(self._queues), list(self._callbacks)
        for callback in callbacks:
            try:
                callback(event)
            except Exception:  # one waiter's mistake is not the publisher's
                log.exception("an event callback failed")
        for listener in listeners:
            # A listener that does not read loses events; meda does not wait for it.
            with contextlib.suppress(queue.Full):
                listener.put_nowait(event)
