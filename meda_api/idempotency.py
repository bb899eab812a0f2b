"""``Idempotency-Key`` on the operations that create something: a retry gets the first answer.

A request with a key claims it in the state store (:mod:`meda_core.state.idempotency`) and
runs; its answer, whatever its status but 5xx and 429, is kept a day under the client's
key (5xx and 429 release the key: those may be retried). A retry with the key and the same
method, path and body gets that answer again, with ``Idempotent-Replayed: true``; while the
first still runs it waits for it on the event loop (no worker thread, counted among the held
requests), up to ``MEDA_IDEMPOTENCY_WAIT`` seconds, then 409. Keys are the client's own (its
token, else its address): another client's same key is another request.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Header, Request
from fastapi.responses import Response
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool

from meda_api.errors import error_response
from meda_api.ratelimit import client_of
from meda_api.waits import RETRY_AFTER_SECONDS, HeldRequests, unless_disconnected
from meda_core.errors import Conflict, InvalidRequest, MedaError
from meda_core.facade import Meda
from meda_core.inputs.idempotency import HEADER, KEY_PATTERN, MAX_KEY_LENGTH, check_key
from meda_core.interface.endpoint import Endpoint
from meda_core.state.idempotency import Answer, Claim, IdempotencyKeys, fingerprint

log = logging.getLogger(__name__)
Handler = Callable[..., Any]
Work = Callable[[], Awaitable[Response]]
#: The header a replayed answer carries.
REPLAYED = "Idempotent-Replayed"
#: Seconds between a waiting retry's looks at the store when nothing here wakes it (the first
#: request runs in another process, or its process died).
POLL_SECONDS = 1.0
#: What the wrapped handler's parameter is, for FastAPI (and the OpenAPI document).
KeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description="Makes a retry safe: the same key with the same body answers as the first "
        "request did (kept a day, per client), and waits for it while it runs; with another "
        "body, 422 IDEMPOTENCY_MISMATCH",
        json_schema_extra={"pattern": KEY_PATTERN, "minLength": 1, "maxLength": MAX_KEY_LENGTH},
    ),
]
#: The success answer's header, in the OpenAPI document.
REPLAYED_HEADER = {
    REPLAYED: {
        "description": "true: this is the answer to an earlier request with this "
        "Idempotency-Key, sent again",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def kept(status: int) -> bool:
    """Whether an answer is kept for its key: all but 5xx and 429, which may be retried."""
    return status < 500 and status != 429


def idempotent(endpoint: Endpoint[Any, Any], handler: Handler) -> Handler:
    """``handler`` (sync or async) made to answer a retry with a key as the first request."""
    call = _awaitable(handler)
    adapter: TypeAdapter[Any] = TypeAdapter(endpoint.response or dict[str, Any])

    async def answer(http: Request, arguments: dict[str, Any]) -> Response:
        """The handler's answer as a response made here, as the route would make it."""
        try:
            result = await call(http, **arguments)
        except MedaError as error:
            return await error_response(http, error)
        if isinstance(result, Response):
            return result
        body = adapter.dump_json(adapter.validate_python(result), by_alias=True)
        return Response(body, endpoint.status, media_type="application/json")

    async def wrapped(http: Request, idempotency_key: str | None = None, **arguments: Any) -> Any:
        given = http.headers.getlist(HEADER)
        if not given:
            return await call(http, **arguments)
        if len(given) > 1:
            raise InvalidRequest(f"one {HEADER} per request ({len(given)} given)", header=HEADER)
        key = check_key(given[0])
        target = http.url.path + _sorted_query(http.url.query)
        sent = fingerprint(http.method, target, await http.body())
        return await _retries(http).answer(http, key, sent, lambda: answer(http, arguments))

    return wrapped


def _awaitable(handler: Handler) -> Callable[..., Awaitable[Any]]:
    if inspect.iscoroutinefunction(handler):
        return handler

    async def in_thread(*args: Any, **kwargs: Any) -> Any:  # as FastAPI runs a sync route
        return await run_in_threadpool(handler, *args, **kwargs)

    return in_thread


def _sorted_query(query: str) -> str:
    return "?" + "&".join(sorted(query.split("&"))) if query else ""


def _retries(http: Request) -> Retries:
    retries: Retries | None = getattr(http.app.state, "retries", None)
    if retries is None:
        meda: Meda = http.app.state.meda
        keys = IdempotencyKeys(meda.store)
        retries = Retries(keys, meda.settings.idempotency_wait, http.app.state.held)
        http.app.state.retries = retries
    return retries


class Retries:
    """The app's requests with keys: the work of each key claimed here, and who waits."""

    def __init__(self, keys: IdempotencyKeys, wait: float, held: HeldRequests) -> None:
        self.keys, self.wait, self.held = keys, wait, held
        self._done: dict[tuple[str, str], asyncio.Event] = {}
        self._running: set[asyncio.Task[Response]] = set()

    async def answer(self, http: Request, key: str, fingerprint: str, work: Work) -> Response:
        """``work``'s answer if ``key`` is new to the client (or was released), else the one
        kept for it; waits while the request that claimed it runs."""
        client = client_of(http.scope)
        deadline = time.monotonic() + self.wait
        release: Callable[[], None] | None = None
        try:
            while True:
                found = await run_in_threadpool(self.keys.claim, client, key, fingerprint)
                if found is Claim.CLAIMED:
                    return await self._first(client, key, work)
                if isinstance(found, Answer):
                    return _replay(found)
                release = release or self.held.hold(http)  # 429 past MEDA_MAX_WAITS
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._still_running(key)
                if await unless_disconnected(http, self._changed(client, key, left)) is None:
                    raise self._still_running(key)  # the client left: nobody reads this
        finally:
            if release is not None:
                release()

    async def _first(self, client: str, key: str, work: Work) -> Response:
        """Run ``work`` for the key claimed: to its end and its answer kept even if this
        request is cancelled (its client gone), or a retry would wait for nothing."""
        done = self._done[(client, key)] = asyncio.Event()
        task = asyncio.ensure_future(self._run(client, key, work, done))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return await asyncio.shield(task)

    async def _run(self, client: str, key: str, work: Work, done: asyncio.Event) -> Response:
        try:
            response = await work()
            headers = {k: v for k, v in response.headers.items() if k != "content-length"}
            answer = Answer(response.status_code, bytes(response.body), headers)
            if kept(answer.status):
                await run_in_threadpool(self.keys.finish, client, key, answer)
            else:
                await run_in_threadpool(self.keys.release, client, key)
            return response
        except BaseException:
            try:
                await run_in_threadpool(self.keys.release, client, key)
            except Exception:  # the claim stays until this process ends; the error goes on
                log.exception("could not release %s %r", HEADER, key)
            raise
        finally:
            done.set()
            if self._done.get((client, key)) is done:
                del self._done[(client, key)]

    async def _changed(self, client: str, key: str, left: float) -> bool:
        """Back when the request running ``key`` here ends, or after a poll's time."""
        timeout = min(left, POLL_SECONDS)
        done = self._done.get((client, key))
        if done is None:
            await asyncio.sleep(timeout)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)
        return True

    def _still_running(self, key: str) -> Conflict:
        return Conflict(
            f"the first request with {HEADER} {key!r} is still running after "
            f"{self.wait:g}s (MEDA_IDEMPOTENCY_WAIT); retry in {RETRY_AFTER_SECONDS}s for "
            "its answer",
            key=key,
            retry_after=RETRY_AFTER_SECONDS,
        )


def _replay(answer: Answer) -> Response:
    headers = {**answer.headers, REPLAYED: "true"}
    return Response(answer.body, answer.status, headers=headers)
