"""Builds the FastAPI application around a :class:`~meda_core.facade.Meda` instance."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware

from meda_api.docs import install_docs
from meda_api.errors import install_error_handlers
from meda_api.hosts import HostGuard, HostPolicy
from meda_api.mcp import mount as mount_mcp
from meda_api.mediatypes import JsonBodies, raw_body
from meda_api.observability import Metrics, RequestContext
from meda_api.origins import OriginGuard
from meda_api.ratelimit import Limit, RateLimit
from meda_api.routes import make_router, raw_body_paths
from meda_api.security import BodyLimit, TokenAuth
from meda_api.waits import HeldRequests
from meda_core import __version__
from meda_core.errors import Forbidden, MedaError, MisdirectedRequest, UnsupportedMediaType
from meda_core.facade import Meda
from meda_core.interface.calls import LocalApi
from meda_core.interface.table import TABLE
from meda_core.models import VMState

API_PREFIX = "/api/v1"
log = logging.getLogger(__name__)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    meda: Meda = app.state.meda
    started = time.monotonic()
    try:
        vms = await run_in_threadpool(meda.recover)
    except MedaError as error:
        log.error("could not recover the VMs' state: %s", error.message)
    else:
        running = sum(vm.state == VMState.RUNNING for vm in vms)
        log.info(
            "recovered %d VM(s), %d running, in %.0f ms",
            len(vms),
            running,
            (time.monotonic() - started) * 1000,
        )
    meda.watch()  # from here on, what changes under meda reaches the store by events
    yield
    await run_in_threadpool(meda.unwatch)
    await run_in_threadpool(meda.guest.close)  # commands still streamed are killed
    await run_in_threadpool(meda.close)  # template builds delete what they half made


#: What the middleware around every route may answer (see meda_api.hosts, origins, mediatypes).
_GUARD_RESPONSES = {
    str(error.http_status): {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    for error, text in (
        (Forbidden, "A web page's Origin that is neither this server's nor in MEDA_CORS_ORIGINS"),
        (UnsupportedMediaType, "A request body not sent as application/json"),
        (MisdirectedRequest, "A Host header that names neither loopback nor an allowed host"),
    )
}


def _document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, without the 422 FastAPI lists: meda answers invalid input
    with 400 and the seed's error body, which every operation documents (a 422 of meda's
    own, NO_AGENT, stays)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                if "HTTPValidationError" in str(responses.get("422")):  # not NO_AGENT's
                    responses.pop("422")
                responses.update(_GUARD_RESPONSES)
        schemas = schema.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(
    meda: Meda | None = None,
    token: str | None = None,
    cors_origins: list[str] | None = None,
    rate_limit: Limit | None = None,
    read_rate_limit: Limit | None = None,
    hosts: HostPolicy | None = None,
    local_socket: str | None = None,
) -> FastAPI:
    """The API app; builds a ``Meda`` from the environment unless one is given.

    With ``token`` every request needs it as a bearer token, except over ``local_socket``;
    CORS is off unless origins are given; ``rate_limit`` caps each client's changes,
    ``read_rate_limit`` its reads; ``hosts`` are the names the server answers to
    (loopback's only by default).
    """
    app = _application(meda or Meda())
    mount_mcp(app, LocalApi(app.state.meda))  # behind the same middleware as the API
    raw_paths = raw_body_paths(TABLE, API_PREFIX)
    # Added innermost first: a request meets them from the bottom of this list up.
    app.add_middleware(JsonBodies, raw_paths=raw_paths)
    app.add_middleware(BodyLimit, raw=partial(raw_body, raw_paths=raw_paths))
    if rate_limit is not None or read_rate_limit is not None:  # after auth: strangers get 401
        app.add_middleware(RateLimit, limit=rate_limit, read_limit=read_rate_limit)
    if token is not None:
        app.add_middleware(TokenAuth, token=token, local_socket=local_socket)
    _guard_origins(app, cors_origins or [])
    app.add_middleware(HostGuard, policy=hosts or HostPolicy())
    _install_metrics(app)  # outermost: sees every answer
    return app


def _application(meda: Meda) -> FastAPI:
    """The app with its routes (the operation table's), error handlers and docs pages."""
    app = FastAPI(
        title="meda",
        version=__version__,
        description="Micro-VMs behind a REST API; every backend a plugin.",
        docs_url=None,  # meda_api.docs serves Swagger UI and ReDoc with their own assets
        redoc_url=None,
        openapi_url=f"{API_PREFIX}/openapi.json",
        # operationId = the route's name: generated clients get create_vm, not
        # create_vm_api_v1_vms_post.
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.meda = meda
    app.state.held = HeldRequests(meda.settings.max_waits, meda.settings.max_waits_per_client)
    app.router.lifespan_context = _lifespan
    install_error_handlers(app)
    app.include_router(make_router(TABLE), prefix=API_PREFIX)
    app.openapi = partial(_document, app)  # type: ignore[method-assign]
    install_docs(app, f"{API_PREFIX}/openapi.json")
    return app


def _guard_origins(app: FastAPI, cors_origins: list[str]) -> None:
    if cors_origins:  # outside auth: preflights carry no token, and a 401 is readable
        app.add_middleware(
            CORSMiddleware, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(OriginGuard, allowed=cors_origins)


def _install_metrics(app: FastAPI) -> None:
    metrics = Metrics(app.state.meda)
    app.state.metrics = metrics
    app.add_route("/metrics", _metrics_endpoint(metrics.registry), include_in_schema=False)
    app.add_middleware(RequestContext, metrics=metrics)


def _metrics_endpoint(registry: CollectorRegistry) -> Callable[[Request], Awaitable[Response]]:
    async def metrics(_: Request) -> Response:
        """Prometheus text format: requests, latencies, VMs by state, events, errors."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
