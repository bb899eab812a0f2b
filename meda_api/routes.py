"""The API's routes, made from the operation table (:mod:`meda_core.interface.table`).

Each :class:`~meda_core.interface.endpoint.Endpoint` becomes one route whose parameters,
statuses and documented errors are the table's, and which runs the endpoint's core call on
the app's ``Meda``. Four kinds: a plain call (in a worker thread); a call that may run in the
background (``Prefer: respond-async``); a wait, held on the event loop and capped
(:class:`~meda_api.waits.HeldRequests`); a stream (events, a console's text), held the same
way.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from functools import partial
from typing import Annotated, Any

import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from meda_api.background import ASYNC_RESPONSES, PreferHeader, run_or_accept
from meda_api.idempotency import REPLAYED_HEADER, KeyHeader, idempotent
from meda_api.mediatypes import OCTET_STREAM, declares
from meda_api.ratelimit import client_of
from meda_api.streams import HeldStream, writer
from meda_api.waits import HeldRequests, unless_disconnected
from meda_core.errors import CommandTimedOut, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from meda_core.facade import Meda
from meda_core.interface.endpoint import Endpoint, Param
from meda_core.models import ErrorBody
from meda_core.vms.guest import caller

Handler = Callable[..., Any]
#: The tag of the routes that reach into guests (exec, files).
GUESTS = "guests"
_KEYWORD = inspect.Parameter.KEYWORD_ONLY
#: What the log says a wait answered once its client had gone (nginx's "client closed").
CLIENT_GONE = 499
_BINARY = {"schema": {"type": "string", "format": "binary"}}
#: What a stream's schema describes: a text stream's chunks; each event of an event stream.
_STREAMED = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "properties": {
                "event": {"type": "string"},
                "data": {"type": "string", "contentMediaType": "application/json"},
                "id": {"type": "string"},
            },
        }
    },
    "text/plain; charset=utf-8": {"schema": {"type": "string"}},
}
KEY_PARAMETER = inspect.Parameter("idempotency_key", _KEYWORD, default=None, annotation=KeyHeader)


def raw_body_paths(table: Iterable[Endpoint[Any, Any]], prefix: str) -> re.Pattern[str]:
    """The paths whose operations take a raw body: the body middleware leaves those
    bodies (``application/octet-stream``) to the route, which caps them itself."""
    paths = [
        re.escape(prefix) + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(endpoint.path))
        for endpoint in table
        if endpoint.content is not None
    ]
    return re.compile("^(?:" + "|".join(paths or ["(?!)"]) + ")$")


def make_router(table: Iterable[Endpoint[Any, Any]]) -> APIRouter:
    """One route per endpoint of ``table``, in its order."""
    router = APIRouter()
    for endpoint in table:
        extra: dict[str, Any] = {}
        if endpoint.stream is not None or endpoint.download is not None:
            extra["response_class"] = StreamingResponse
        if endpoint.content is not None:
            body = {"required": True, "content": {OCTET_STREAM: _BINARY}}
            extra["openapi_extra"] = {"requestBody": body}
        router.add_api_route(
            endpoint.path,
            _handler(endpoint),
            methods=[endpoint.method],
            status_code=endpoint.status,
            response_model=_response_model(endpoint),
            responses=_responses(endpoint),
            tags=[endpoint.tag],
            name=endpoint.operation_id,
            **extra,
        )
    return router


def _response_model(endpoint: Endpoint[Any, Any]) -> Any:
    if endpoint.stream is not None or endpoint.download is not None:
        return None
    return dict[str, Any] if endpoint.response is None else endpoint.response


def _responses(endpoint: Endpoint[Any, Any]) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": text} for code, text in endpoint.errors.items()
    }
    raw = endpoint.stream or endpoint.download
    if raw is not None:
        schema = _STREAMED.get(raw, _BINARY)
        responses[endpoint.status] = {
            "description": "Successful Response",
            "content": {raw: schema},
        }
        if endpoint.page is not None:  # the JSON a request that ends at once answers with
            responses[endpoint.status]["model"] = endpoint.page
    if endpoint.idempotent:  # a replay of any answer carries it; the success's says so
        responses[endpoint.status] = {"headers": REPLAYED_HEADER}
    return responses | ASYNC_RESPONSES if endpoint.background is not None else responses


def _handler(endpoint: Endpoint[Any, Any]) -> Handler:
    if endpoint.stream is not None:
        handler = _streaming(endpoint)
    elif endpoint.content is not None:
        handler = _uploading(endpoint, endpoint.content.name)
    elif endpoint.download is not None:
        handler = _downloading(endpoint, endpoint.download)
    elif endpoint.wait is not None:
        handler = _waiting(endpoint)
    elif endpoint.background is not None:
        handler = _backgrounded(endpoint, endpoint.background)
    elif endpoint.tag == GUESTS:
        handler = _in_guest(endpoint)
    elif endpoint.store_read:
        handler = _store_read(endpoint)
    else:
        handler = _plain(endpoint)
    parameters = [inspect.Parameter("http", _KEYWORD, annotation=Request)]
    parameters += [_parameter(param) for param in endpoint.params if param.where != "content"]
    if endpoint.background is not None:
        parameters.append(
            inspect.Parameter("prefer", _KEYWORD, default=None, annotation=PreferHeader)
        )
    if endpoint.idempotent:
        handler = idempotent(endpoint, handler)
        parameters.append(KEY_PARAMETER)
    handler.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    handler.__name__ = handler.__qualname__ = endpoint.operation_id or endpoint.name
    handler.__doc__ = endpoint.doc
    return handler


def _parameter(param: Param) -> inspect.Parameter:
    """The handler's parameter for ``param``: FastAPI reads its kind and checks from it."""
    annotation = param.type
    if param.where != "body":
        kind = {"path": Path, "header": Header}.get(param.where, Query)
        extra = {"pattern": param.pattern} if param.pattern else None
        field = kind(
            alias=param.alias,
            description=param.description,
            ge=param.ge,
            le=param.le,
            json_schema_extra=extra,
        )
        annotation = Annotated[param.type, field]
    default = inspect.Parameter.empty if param.required else param.default
    return inspect.Parameter(param.name, _KEYWORD, default=default, annotation=annotation)


def _meda(http: Request) -> Meda:
    meda: Meda = http.app.state.meda
    return meda


def _held(http: Request) -> HeldRequests:
    held: HeldRequests = http.app.state.held
    return held


def _as_caller(http: Request) -> None:
    """Name the request's client (token digest, else address) to the core: its audit lines
    and the command sessions it may feed."""
    caller.set(client_of(http.scope))


def _plain(endpoint: Endpoint[Any, Any]) -> Handler:
    def handler(http: Request, **arguments: Any) -> Any:
        _as_caller(http)
        return endpoint.call(_meda(http), **arguments)

    return handler


def _store_read(endpoint: Endpoint[Any, Any]) -> Handler:
    """On the event loop while the VMs are watched (the call then reads the store alone:
    no worker thread to hand it to and back), else in a worker thread as a plain call."""

    async def handler(http: Request, **arguments: Any) -> Any:
        meda = _meda(http)
        if meda.watched:
            return endpoint.call(meda, **arguments)
        return await run_in_threadpool(partial(endpoint.call, meda, **arguments))

    return handler


def _backgrounded(endpoint: Endpoint[Any, Any], kind: str) -> Handler:
    def handler(http: Request, prefer: str | None = None, **arguments: Any) -> Any:
        meda = _meda(http)

        def work(progress: Any) -> Any:
            return endpoint.call(meda, progress=progress, **arguments)

        return run_or_accept(prefer, meda, kind, work)

    return handler


def _waiting(endpoint: Endpoint[Any, Any]) -> Handler:
    """Held only while a ``holds`` parameter asks to wait (a required one always does); the
    call is then the endpoint's ``wait`` form, on the event loop, given up as soon as the
    client leaves."""
    assert endpoint.wait is not None
    wait = endpoint.wait

    async def handler(http: Request, **arguments: Any) -> Any:
        meda = _meda(http)
        holding = {p.name: p.default for p in endpoint.params if p.holds}
        if all(arguments[name] == default for name, default in holding.items()):
            return endpoint.call(meda, **arguments)  # waits for nothing: no thread needed
        release = _held(http).hold(http)
        try:
            result = await unless_disconnected(http, wait(meda, **arguments))
        finally:
            release()
        if result is not None:
            return result
        if any(default is ... for default in holding.values()):  # every value waits
            return Response(status_code=CLIENT_GONE)
        # The client left: an answer nobody reads, without waiting.
        return endpoint.call(meda, **arguments | holding)

    return handler


def _streaming(endpoint: Endpoint[Any, Any]) -> Handler:
    """Held (and capped) unless a ``holds`` parameter says it ends at once (a console
    read without ``follow``); the call runs in a worker thread (it may read files)."""
    media_type = endpoint.stream
    assert media_type is not None
    holding = {p.name: p.default for p in endpoint.params if p.holds}

    async def handler(http: Request, **arguments: Any) -> Response:
        ends = holding and all(arguments[name] == value for name, value in holding.items())
        ends = ends or any(arguments[p.name] in p.ends for p in endpoint.params)
        release = _nothing if ends else _held(http).hold(http)
        _as_caller(http)
        try:  # in a worker: starting may wait on a guest (its agent's ping), or read files
            feed = await run_in_threadpool(partial(endpoint.call, _meda(http), **arguments))
        except BaseException:
            release()
            raise
        if isinstance(feed, BaseModel):  # a page, not a stream
            release()
            return JSONResponse(feed.model_dump(mode="json"))

        def close() -> None:
            feed.close()
            release()

        return HeldStream(writer(media_type)(http, feed), close, media_type)

    return handler


def _nothing() -> None:
    pass


async def _guest_work(http: Request, call: Callable[[], Any]) -> Any:
    """``call`` (exec, an upload: it may last as long as the guest or the client take)
    held like a wait (capped per client) and run in a worker of the guests' own limiter,
    never in the pool the other routes share."""
    release = _held(http).hold(http)
    try:
        return await anyio.to_thread.run_sync(call, limiter=_guest_threads(http))
    finally:
        release()


def _guest_threads(http: Request) -> anyio.CapacityLimiter:
    """The worker threads of the work that waits on guests (apart from the shared pool)."""
    threads: anyio.CapacityLimiter | None = getattr(http.app.state, "guest_threads", None)
    if threads is None:
        settings = _meda(http).settings
        threads = anyio.CapacityLimiter(settings.max_waits + settings.exec_sessions_max)
        http.app.state.guest_threads = threads
    return threads


def _in_guest(endpoint: Endpoint[Any, Any]) -> Handler:
    """A plain call into a guest (a command run to its end) through :func:`_guest_work`."""

    async def handler(http: Request, **arguments: Any) -> Any:
        _as_caller(http)
        return await _guest_work(http, partial(endpoint.call, _meda(http), **arguments))

    return handler


def _uploading(endpoint: Endpoint[Any, Any], name: str) -> Handler:
    """The raw body to the call as chunks while they arrive (the call runs in a worker),
    refused past MEDA_FILE_MAX_BYTES by its declared length at once, else as it comes."""

    async def handler(http: Request, **arguments: Any) -> Any:
        declared = http.headers.get("content-type", "none")
        if not declares(declared.encode(), OCTET_STREAM):
            raise UnsupportedMediaType(
                f"this body must be sent as {OCTET_STREAM}, not {declared[:100]}",
                content_type=declared[:100],
            )
        limit = _meda(http).settings.file_max_bytes
        length = http.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"body over {limit} bytes (MEDA_FILE_MAX_BYTES)", limit=limit)
        _as_caller(http)
        idle = _meda(http).settings.body_idle_timeout
        chunks = _chunks(http, idle)
        return await _guest_work(
            http, partial(endpoint.call, _meda(http), **arguments, **{name: chunks})
        )

    return handler


def _chunks(http: Request, idle: float) -> Iterator[bytes]:
    """The request's body, read from a worker thread through the event loop; a pause
    past ``idle`` seconds is 408, a client gone mid-body 400 (an answer nobody reads)."""
    stream: AsyncIterator[bytes] = http.stream().__aiter__()

    async def more() -> bytes:
        try:
            with anyio.fail_after(idle):
                return await stream.__anext__()
        except TimeoutError:
            raise CommandTimedOut(
                f"the body paused for over {idle:g}s (MEDA_BODY_IDLE_TIMEOUT)", timeout=idle
            ) from None
        except ClientDisconnect:
            raise InvalidRequest("the client went away before its body ended") from None

    while True:
        try:
            chunk: bytes = anyio.from_thread.run(more)
        except StopAsyncIteration:
            return
        if chunk:
            yield chunk


def _downloading(endpoint: Endpoint[Any, Any], media_type: str) -> Handler:
    """The call's chunks as the body; its errors before the first byte are statuses."""

    async def handler(http: Request, **arguments: Any) -> StreamingResponse:
        _as_caller(http)
        release = _held(http).hold(http)  # held like a wait until the last byte
        try:
            chunks = await anyio.to_thread.run_sync(
                partial(endpoint.call, _meda(http), **arguments), limiter=_guest_threads(http)
            )
        except BaseException:
            release()
            raise
        return StreamingResponse(_pulled(http, iter(chunks), release), media_type=media_type)

    return handler


async def _pulled(
    http: Request, chunks: Iterator[bytes], release: Callable[[], None]
) -> AsyncIterator[bytes]:
    """``chunks``, each read in a guest worker (a guest may trickle them): never in the
    pool the other routes share."""
    threads = _guest_threads(http)
    try:
        while (
            chunk := await anyio.to_thread.run_sync(next, chunks, None, limiter=threads)
        ) is not None:
            yield chunk
    finally:
        release()
        close = getattr(chunks, "close", None)
        if close is not None:
            await anyio.to_thread.run_sync(close, limiter=threads)
