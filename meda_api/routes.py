"""The API's routes, made from the operation table (:mod:`meda_core.interface.table`).

Each :class:`~meda_core.interface.endpoint.Endpoint` becomes one route whose parameters,
statuses and documented errors are the table's, and which runs the endpoint's core call on
the app's ``Meda``. Four kinds: a plain call (in a worker thread); a call that may run in the
background (``Prefer: respond-async``); a wait, held on the event loop and capped
(:class:`~meda_api.waits.HeldRequests`); an event stream, held the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from meda_api.background import ASYNC_RESPONSES, PreferHeader, run_or_accept
from meda_api.streams import HeldStream, sse
from meda_api.waits import HeldRequests, unless_disconnected
from meda_core.facade import Meda
from meda_core.interface.endpoint import Endpoint, Param
from meda_core.models import ErrorBody

Handler = Callable[..., Any]
_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def make_router(table: Iterable[Endpoint[Any, Any]]) -> APIRouter:
    """One route per endpoint of ``table``, in its order."""
    router = APIRouter()
    for endpoint in table:
        extra: dict[str, Any] = {}
        if endpoint.stream is not None:
            extra["response_class"] = StreamingResponse
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
    if endpoint.stream is not None:
        return None
    return dict[str, Any] if endpoint.response is None else endpoint.response


def _responses(endpoint: Endpoint[Any, Any]) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": text} for code, text in endpoint.errors.items()
    }
    return responses | ASYNC_RESPONSES if endpoint.background is not None else responses


def _handler(endpoint: Endpoint[Any, Any]) -> Handler:
    if endpoint.stream is not None:
        handler = _streaming(endpoint)
    elif endpoint.wait is not None:
        handler = _waiting(endpoint)
    elif endpoint.background is not None:
        handler = _backgrounded(endpoint, endpoint.background)
    elif endpoint.store_read:
        handler = _store_read(endpoint)
    else:
        handler = _plain(endpoint)
    parameters = [inspect.Parameter("http", _KEYWORD, annotation=Request)]
    parameters += [_parameter(param) for param in endpoint.params]
    if endpoint.background is not None:
        parameters.append(
            inspect.Parameter("prefer", _KEYWORD, default=None, annotation=PreferHeader)
        )
    handler.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    handler.__name__ = handler.__qualname__ = endpoint.operation_id or endpoint.name
    handler.__doc__ = endpoint.doc
    return handler


def _parameter(param: Param) -> inspect.Parameter:
    """The handler's parameter for ``param``: FastAPI reads its kind and checks from it."""
    annotation = param.type
    if param.where != "body":
        kind = Path if param.where == "path" else Query
        extra = {"pattern": param.pattern} if param.pattern else None
        field = kind(
            description=param.description, ge=param.ge, le=param.le, json_schema_extra=extra
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


def _plain(endpoint: Endpoint[Any, Any]) -> Handler:
    def handler(http: Request, **arguments: Any) -> Any:
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
    """Held only while a ``holds`` parameter asks to wait; the call is then the endpoint's
    ``wait`` form, on the event loop, given up as soon as the client leaves."""
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
        # The client left: an answer nobody reads, without waiting.
        return result if result is not None else endpoint.call(meda, **arguments | holding)

    return handler


def _streaming(endpoint: Endpoint[Any, Any]) -> Handler:
    media_type = endpoint.stream
    assert media_type is not None

    async def handler(http: Request, **arguments: Any) -> StreamingResponse:
        release = _held(http).hold(http)
        try:
            feed = endpoint.call(_meda(http), **arguments)
        except BaseException:
            release()
            raise

        def close() -> None:
            feed.close()
            release()

        return HeldStream(sse(http, feed), close, media_type)

    return handler
