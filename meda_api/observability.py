"""Request ids, Prometheus metrics and the access log, as one ASGI middleware."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meda_core import hookimpl
from meda_core.facade import Meda
from meda_core.models import VMState
from meda_core.state.events import VMEvent
from meda_core.state.events import request_id as request_id  # for logs and error bodies

_GIVEN_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
access_log = logging.getLogger("meda_api.access")


class Metrics:
    """meda's metrics, in a registry of their own (one per app)."""

    def __init__(self, meda: Meda) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "meda_http_requests",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "meda_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.vm_events = Counter(
            "meda_vm_events", "VM lifecycle events", ["kind"], registry=self.registry
        )
        self.errors = Counter(
            "meda_errors",
            "Errors answered, by code (INSUFFICIENT_CAPACITY: admission denials)",
            ["code"],
            registry=self.registry,
        )
        self.registry.register(_VMStates(meda))
        meda.plugins.add_plugin("api-metrics", _EventCounter(self.vm_events))


class _EventCounter:
    """A built-in plugin: counts VM lifecycle events as they happen."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter

    @hookimpl
    def meda_vm_event(self, event: VMEvent) -> None:
        self._counter.labels(kind=event.kind.value).inc()


class _VMStates(Collector):
    """VMs per state, read from the store when scraped."""

    def __init__(self, meda: Meda) -> None:
        self._meda = meda

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("meda_vms", "VMs by state", labels=["state"])
        vms = self._meda.store.list_vms()
        for state in VMState:
            family.add_metric([state.value], sum(vm.state == state for vm in vms))
        yield family


def _route(scope: Scope) -> str:
    """The matched route's template (``/api/v1/vms/{name}``): label values stay bounded
    and never carry a VM's name."""
    if scope.get("route") is None:
        return "unmatched"
    names = {str(value): key for key, value in scope.get("path_params", {}).items()}
    segments = str(scope["path"]).split("/")
    return "/".join(f"{{{names[s]}}}" if s in names else s for s in segments)


#: No page may frame meda's (Swagger UI's "Execute" button under a decoy: clickjacking).
FRAMING = (b"x-frame-options", b"DENY")
#: The policy of every answer that brings none (the docs pages bring a stricter one).
DEFAULT_CSP = (b"content-security-policy", b"frame-ancestors 'none'")


#: A browser takes an answer for what its Content-Type says, never for a script or a page.
NO_SNIFFING = (b"x-content-type-options", b"nosniff")


def _guarded(headers: list[tuple[bytes, bytes]], rid: str) -> list[tuple[bytes, bytes]]:
    """``headers`` with the request id, the framing ban, nosniff and a CSP (each unless it
    has one)."""
    present = {name.lower() for name, _ in headers}
    added = [(b"x-request-id", rid.encode()), FRAMING]
    added += [header for header in (DEFAULT_CSP, NO_SNIFFING) if header[0] not in present]
    return [*headers, *added]


class RequestContext:
    """Give every request an id (``X-Request-ID``, echoed), time it, count it, log it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode(errors="replace")
        rid = given if _GIVEN_ID.fullmatch(given) else secrets.token_hex(8)
        token = request_id.set(rid)
        started, status = time.monotonic(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = _guarded(list(message.get("headers", [])), rid)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.monotonic() - started
            route, method = _route(scope), scope["method"]
            self.metrics.requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.latency.labels(method=method, route=route).observe(seconds)
            access_log.info(
                "%s %s %d %.1fms",
                method,
                route,
                status,
                seconds * 1000,
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "ms": round(seconds * 1000, 1),
                },
            )
            request_id.reset(token)
