"""Event feeds: the events an API call streams, read here (the bus) or from a server (SSE)."""

from __future__ import annotations

import json
import queue
from collections.abc import Callable, Iterator
from typing import Any

Event = dict[str, Any]


class EventFeed:
    """Events as they happen: ``next`` gives one, or None when none came; close it after."""

    def next(self, timeout: float | None = None) -> Event | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.next()
            if event is not None:
                yield event

    def __enter__(self) -> EventFeed:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class BusFeed(EventFeed):
    """A subscription to this process's event bus; ``timeout=0`` never blocks."""

    def __init__(self, listener: queue.Queue[Event], close: Callable[[], None]) -> None:
        self._listener, self._close = listener, close

    def next(self, timeout: float | None = None) -> Event | None:
        try:
            if timeout == 0:
                return self._listener.get_nowait()
            return self._listener.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._close()


class SseFeed(EventFeed):
    """The ``text/event-stream`` a server sends; a comment (its keepalive) reads as None."""

    def __init__(self, lines: Iterator[str], close: Callable[[], None]) -> None:
        self._lines, self._close = lines, close

    def next(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting as long as the server's stream does (``timeout`` unused:
        the server's keepalive bounds the wait)."""
        event: Event = {}
        for line in self._lines:
            if line.startswith("event: "):
                event["event"] = line.removeprefix("event: ")
            elif line.startswith("data: "):
                event["data"] = json.loads(line.removeprefix("data: "))
            elif not line:
                return event or None
        raise EOFError("the server ended the event stream")

    def __iter__(self) -> Iterator[Event]:
        try:
            yield from super().__iter__()
        except EOFError:
            return

    def close(self) -> None:
        self._close()
