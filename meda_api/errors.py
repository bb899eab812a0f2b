"""The one place where errors become HTTP responses with the seed's ``{error, code, details}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from meda_api.observability import request_id
from meda_core.errors import InvalidRequest, MedaError
from meda_core.inputs.validation import describe

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 400: "INVALID_REQUEST"}


def _body(error: str, code: str, **details: Any) -> dict[str, Any]:
    return {"error": error, "code": code, "details": {"message": error, **details}}


def _validation_message(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        return "malformed JSON in request body", describe(errors)[1]
    message, problems = describe(errors)
    return message, list(problems)


def _respond(
    request: Request, body: dict[str, Any], status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Every error answer: the seed's body with the request's id, counted by code."""
    body["details"]["request_id"] = request_id.get()
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(code=body["code"]).inc()
    return JSONResponse(body, status_code=status, headers=headers)


async def _meda_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MedaError)
    if exc.http_status >= 500:
        log.error("%s: %s", exc.code, exc.message)
    headers = {}
    if "retry_after" in exc.details:
        headers["Retry-After"] = str(exc.details["retry_after"])
    return _respond(request, exc.to_body(), exc.http_status, headers)


async def error_response(request: Request, error: MedaError) -> JSONResponse:
    """What the API answers ``error`` with, for a route that makes its answer itself."""
    return await _meda_error(request, error)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, problems = _validation_message(exc)
    return _respond(request, _body(message, InvalidRequest.code, errors=problems), 400)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE and isinstance(route, APIRoute):
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "HTTP_ERROR")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return _respond(request, _body(str(exc.detail), code), exc.status_code, headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    body = _body(f"internal error: {type(exc).__name__}", "INTERNAL_ERROR")
    return _respond(request, body, 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MedaError, _meda_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
