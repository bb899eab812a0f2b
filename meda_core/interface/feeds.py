"""Feeds: what an API call streams (events, a console's text), read here or from a server."""

from __future__ import annotations

import codecs
import collections
import json
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

Event = dict[str, Any]


class EventFeed:
    """Events as they happen: ``next`` gives one, or None when none came; close it after."""

    def next(self, timeout: float | None = None) -> Event | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @property
    def ended(self) -> bool:
        """True once the feed gave its last event (a bus feed never ends)."""
        return False

    def __iter__(self) -> Iterator[Event]:
        while not self.ended:
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


class ReplayFeed(EventFeed):
    """The journal's events after ``since``, a page at a time, then the live ones of
    ``live`` (subscribed before the first page was read: none missed, none twice)."""

    def __init__(self, page: Callable[[int], list[Event]], since: int, live: EventFeed) -> None:
        self._page, self._last, self._live = page, since, live
        self._backlog: collections.deque[Event] = collections.deque()
        self._caught_up = False

    def next(self, timeout: float | None = None) -> Event | None:
        if not self._backlog and not self._caught_up:
            self._backlog.extend(self._page(self._last))
            self._caught_up = not self._backlog
        if self._backlog:
            first = self._backlog.popleft()
            self._last = first["id"]
            return first
        while (live := self._live.next(timeout)) is not None:
            if live.get("id", self._last + 1) > self._last:  # not one the pages gave
                self._last = live.get("id", self._last)
                return live
        return None

    def close(self) -> None:
        self._live.close()


class SseFeed(EventFeed):
    """The ``text/event-stream`` a server sends; a comment (its keepalive) reads as None."""

    def __init__(self, lines: Iterator[str], close: Callable[[], None]) -> None:
        self._lines, self._close = lines, close

    def next(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting as long as the server's stream does (``timeout`` unused:
        the server's keepalive bounds the wait)."""
        event: Event = {}
        for line in self._lines:
            if line.startswith("id: "):
                event["id"] = int(line.removeprefix("id: "))
            elif line.startswith("event: "):
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


class TextFeed:
    """Text as it comes (a console log): ``read`` gives what came since the last read, ""
    when nothing did, None once it has ended; iterating gives the chunks until the end."""

    #: Seconds between two reads that found nothing, when iterated.
    poll_seconds = 0.1

    def read(self) -> str | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[str]:
        while (chunk := self.read()) is not None:
            if chunk:
                yield chunk
            else:
                time.sleep(self.poll_seconds)

    def __enter__(self) -> TextFeed:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class DecodedFeed(TextFeed):
    """Bytes from this host decoded as UTF-8, what is not replaced by U+FFFD (a character
    cut between two reads is kept for the next): ``first``, then what ``more`` gives until
    it raises :class:`EOFError` (None: nothing more)."""

    def __init__(self, first: bytes, more: Callable[[], bytes] | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first: bytes | None = first
        self._more = more

    def read(self) -> str | None:
        if self._first is not None:
            first, self._first = self._first, None
            text = self._decoder.decode(first, final=self._more is None)
            return text if text or self._more is not None else None
        if self._more is None:
            return None
        try:
            return self._decoder.decode(self._more())
        except EOFError:
            self._more = None
            return self._decoder.decode(b"", final=True) or None

    def close(self) -> None:
        self._more = None


class HttpTextFeed(TextFeed):
    """The text a server streams: ``read`` waits for the next chunk (its end: None)."""

    def __init__(self, chunks: Iterator[str], close: Callable[[], None]) -> None:
        self._chunks, self._close = chunks, close

    def read(self) -> str | None:
        return next(self._chunks, None)

    def __iter__(self) -> Iterator[str]:
        return (chunk for chunk in self._chunks if chunk)

    def close(self) -> None:
        self._close()


class Source(Protocol):
    def next(self, timeout: float | None = None) -> Event | None: ...
    def close(self) -> None: ...
    @property
    def ended(self) -> bool: ...


class SessionFeed(EventFeed):
    """The events of one command under way in a guest; closing it kills the command."""

    def __init__(self, source: Source) -> None:
        self._source = source

    def next(self, timeout: float | None = None) -> Event | None:
        return self._source.next(timeout)

    @property
    def ended(self) -> bool:
        return self._source.ended

    def close(self) -> None:
        self._source.close()
