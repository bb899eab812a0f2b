"""In-process fan-out of events (VM lifecycle, operations) to any number of listeners."""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any

MAX_BACKLOG = 1000


class EventBus:
    """Thread-safe: publish from any thread; each subscriber has its own bounded queue."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: list[queue.Queue[dict[str, Any]]] = []

    def subscribe(self) -> queue.Queue[dict[str, Any]]:
        listener: queue.Queue[dict[str, Any]] = queue.Queue(MAX_BACKLOG)
        with self._lock:
            self._queues.append(listener)
        return listener

    def unsubscribe(self, listener: queue.Queue[dict[str, Any]]) -> None:
        with self._lock:
            if listener in self._queues:
                self._queues.remove(listener)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        event = {"event": kind, "data": data}
        with self._lock:
            listeners = list(self._queues)
        for listener in listeners:
            # A listener that does not read loses events; meda does not wait for it.
            with contextlib.suppress(queue.Full):
                listener.put_nowait(event)
