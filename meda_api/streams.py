"""Streams: an event feed written as ``text/event-stream`` (with keepalives), a text feed
as it comes.

A stream waits on the event loop (no worker thread) and gives back what it holds (its
place among the held requests, its subscription) however it ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from meda_core.interface.feeds import EventFeed, TextFeed

KEEPALIVE_SECONDS = 15.0
POLL_SECONDS = 0.1


async def sse(request: Request, feed: EventFeed) -> AsyncIterator[str]:
    """``feed``'s events as SSE until it ends or the client goes away; a comment when idle."""
    yield ": meda events\n\n"
    idle = 0.0
    while not await request.is_disconnected():
        item = feed.next(timeout=0)
        if item is None:
            if feed.ended:
                return
            await asyncio.sleep(POLL_SECONDS)
            idle += POLL_SECONDS
            if idle >= KEEPALIVE_SECONDS:
                idle = 0.0
                yield ": keepalive\n\n"
            continue
        idle = 0.0
        event_id = f"id: {item['id']}\n" if "id" in item else ""
        yield f"{event_id}event: {item['event']}\ndata: {json.dumps(item['data'])}\n\n"


async def text(request: Request, feed: TextFeed) -> AsyncIterator[str]:
    """``feed``'s text as it comes, until it ends or the client goes away."""
    while (chunk := feed.read()) is not None:
        if chunk:
            yield chunk
        elif await request.is_disconnected():
            return
        else:
            await asyncio.sleep(POLL_SECONDS)


def writer(media_type: str) -> Callable[[Request, Any], AsyncIterator[str]]:
    """How a feed is written as ``media_type``: events as SSE, anything else as text."""
    return sse if media_type == "text/event-stream" else text


class HeldStream(StreamingResponse):
    """An event stream that gives back what it holds however it ends, even unstarted."""

    def __init__(
        self, content: AsyncIterator[str], close: Callable[[], None], media_type: str
    ) -> None:
        super().__init__(content, media_type=media_type)
        self._close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._close()
