"""``RemoteApi``: :class:`~meda_core.interface.table.MedaApi` over HTTP, against a ``meda serve``.

    >>> api = RemoteApi("http://vmhost:7777", token="...")
    >>> api.create_vm(CreateVMRequest(name="demo")).message
    >>> api.idempotent(key).create_vm(request)  # sent again after a timeout: one VM

Each call becomes the request its table entry declares: path parameters in the path, the
rest of the query unless left at their default, the request model as the JSON body.
Errors come back as the same :mod:`meda_core.errors` classes the server raised.
"""

from __future__ import annotations

import copy
import inspect
import ssl
import time
from collections.abc import Iterator
from enum import Enum
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from meda_core.errors import BackendUnavailable, MedaError
from meda_core.inputs.idempotency import HEADER, check_key
from meda_core.interface.endpoint import Endpoint
from meda_core.interface.feeds import HttpTextFeed, SseFeed, TextFeed
from meda_core.interface.table import MedaApi
from meda_core.models import EventPage
from meda_core.state.operations import FINISHED, Operation, OperationState, Progress

M = TypeVar("M", bound=BaseModel)
POLL_SECONDS = 0.25


def _segment(value: object) -> str:
    return quote(str(value), safe="")


def _query_value(value: object) -> str | list[str]:
    if isinstance(value, list | tuple):
        return [str(_query_value(item)) for item in value]
    if isinstance(value, bool):
        return str(value).lower()
    return str(value.value if isinstance(value, Enum) else value)


def _request(endpoint: Endpoint[Any, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """The path, query and JSON body of a call to ``endpoint`` with ``arguments``."""
    path = endpoint.path.format(
        **{p.name: _segment(arguments[p.name]) for p in endpoint.params if p.where == "path"}
    )
    query = {
        p.http_name: _query_value(arguments[p.name])
        for p in endpoint.params
        if p.where == "query" and arguments[p.name] not in (None, p.default)
    }
    request: dict[str, Any] = {"path": path, "params": query}
    headers = {
        p.http_name: str(arguments[p.name])
        for p in endpoint.params
        if p.where == "header" and arguments[p.name] is not None
    }
    if headers:
        request["headers"] = headers
    if endpoint.body is not None:
        body: BaseModel = arguments[endpoint.body.name]
        request["json"] = body.model_dump(mode="json", exclude_unset=True)
    if endpoint.content is not None:  # bytes, or chunks sent as they come (chunked)
        request["content"] = arguments[endpoint.content.name]
        request["headers"] = {**headers, "Content-Type": "application/octet-stream"}
    return request


#: Seconds the CLI waits for a server to take its connection.
CONNECT_TIMEOUT = 10.0


class RemoteApi(MedaApi):
    """Every API call sent to the server at ``url``, with ``token`` as a bearer token.

    ``url`` may be ``unix:///path/to/socket`` for a server's Unix socket.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
        ca_file: str | None = None,
    ) -> None:
        """``ca_file``: the CA (or self-signed certificate) an HTTPS server's is checked with."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        if url.startswith("unix://"):
            socket = "/" + url.removeprefix("unix://").lstrip("/")
            transport = transport or httpx.HTTPTransport(uds=socket)
            url = "http://localhost"  # the Host a local client names
        base = url.rstrip("/")
        if not base.endswith("/api/v1"):
            base += "/api/v1"
        verify: ssl.SSLContext | bool = True
        if ca_file:
            verify = ssl.create_default_context(cafile=ca_file)
        # A long answer may be a pull; a server that never answers the connection is not.
        limits = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT)
        self._http = httpx.Client(
            base_url=base, headers=headers, timeout=limits, transport=transport, verify=verify
        )
        self._key: str | None = None

    def close(self) -> None:
        self._http.close()

    def idempotent(self, key: str) -> RemoteApi:
        """This API sending ``key`` as the ``Idempotency-Key`` of the calls that create
        something: sent again after a timeout, such a call answers as the first did, never
        twice (one key per intended operation; a UUID). Shares this one's connection."""
        keyed = copy.copy(self)
        keyed._key = check_key(key)
        return keyed

    # ---- plumbing ----

    def invoke(self, endpoint: Endpoint[Any, Any], /, *args: Any, **kwargs: Any) -> Any:
        bound = inspect.signature(endpoint.call).bind(None, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        request = _request(endpoint, arguments)
        if endpoint.idempotent and self._key is not None:
            request["headers"] = {**request.get("headers", {}), HEADER: self._key}
        if endpoint.stream is not None:
            return self._stream(endpoint.method, request, endpoint.stream)
        if endpoint.download is not None:
            return self._download(request)
        if endpoint.background is not None and endpoint.response is not None:
            return self._long(endpoint.response, request, arguments["progress"])
        if endpoint.wait is not None:  # the server answers when its wait ends, bounded there
            request["timeout"] = httpx.Timeout(None, connect=CONNECT_TIMEOUT)
        answer = self._send(endpoint.method, request.pop("path"), **request).json()
        return answer if endpoint.response is None else endpoint.response.model_validate(answer)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise _error(response)
        return response

    def _unreachable(self, exc: Exception) -> BackendUnavailable:
        return BackendUnavailable(
            f"cannot reach the meda server at {self.url}: {exc}", url=self.url
        )

    def _stream(
        self, method: str, request: dict[str, Any], media_type: str
    ) -> SseFeed | TextFeed | EventPage:
        """The server's stream (events, or text), read as it comes (no read timeout: a
        followed console may stay quiet for long; events have keepalives); or the page of
        events it answered with instead."""
        response = self._open(method, request)
        if response.headers.get("content-type", "").startswith("application/json"):
            response.read()
            response.close()
            return EventPage.model_validate(response.json())
        if media_type == "text/event-stream":
            return SseFeed(response.iter_lines(), response.close)
        return HttpTextFeed(response.iter_text(), response.close)

    def _download(self, request: dict[str, Any]) -> Iterator[bytes]:
        """The bytes a server answers with, as they come; errors before the first one."""
        response = self._open("GET", request)

        def chunks() -> Iterator[bytes]:
            try:
                yield from response.iter_bytes()
            finally:
                response.close()

        return chunks()

    def _open(self, method: str, request: dict[str, Any]) -> httpx.Response:
        timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT)
        sent = self._http.build_request(method, request.pop("path"), timeout=timeout, **request)
        try:
            response = self._http.send(sent, stream=True)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            response.read()
            response.close()
            raise _error(response)
        return response

    def _long(self, model: type[M], request: dict[str, Any], progress: Progress) -> M:
        """Long work as a background operation, polled for its progress and result."""
        path = request.pop("path")
        headers = {**request.pop("headers", {}), "Prefer": "respond-async"}
        response = self._send("POST", path, headers=headers, **request)
        if response.status_code != 202:  # a server that chose to answer at once
            return model.model_validate(response.json())
        op = Operation.model_validate(response.json())
        while op.state not in FINISHED:
            time.sleep(POLL_SECONDS)
            op = Operation.model_validate(self._send("GET", f"/operations/{op.id}").json())
            if op.bytes_total:
                progress(op.bytes_done, op.bytes_total)
        if op.state != OperationState.SUCCEEDED or op.result is None:
            raise MedaError.from_body(op.error or {"error": f"{op.kind} {op.state.value}"}, 500)
        return model.model_validate(op.result)


def _error(response: httpx.Response) -> MedaError:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return MedaError.from_body(body, response.status_code)
