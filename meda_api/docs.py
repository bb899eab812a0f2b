"""Swagger UI and ReDoc with their scripts served by meda: the pages work without internet."""

from __future__ import annotations

import json
import secrets
from importlib import metadata, resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

SWAGGER_UI = "/swagger-ui"
REDOC = "/redoc"
ASSETS = "/static/docs"

#: The assets fastapi-offline bundles (Swagger UI's dist, ReDoc's standalone build): only
#: these names are served, with these types.
_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
_FOLDER = Path(str(resources.files("fastapi_offline") / "static"))
# In every asset URL: an upgrade changes the URL, so a year's caching never serves stale code.
_VERSION = metadata.version("fastapi-offline")
_ASSET_HEADERS = {
    "Cache-Control": "public, max-age=31536000, immutable",
    "X-Content-Type-Options": "nosniff",
}


def asset_url(name: str) -> str:
    return f"{ASSETS}/{name}?v={_VERSION}"


def policy(nonce: str, *more: str) -> str:
    """The docs pages' CSP: everything from meda itself, inline code only with the nonce."""
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src 'self' 'nonce-{nonce}'",
            f"style-src 'self' 'nonce-{nonce}'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            *more,
        )
    )


def _page(html: str, csp: str) -> HTMLResponse:
    headers = {
        "Content-Security-Policy": csp,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    return HTMLResponse(html, headers=headers)


def _swagger_ui(openapi_url: str, title: str) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{title} - Swagger UI",
        swagger_js_url=asset_url("swagger-ui-bundle.js"),
        swagger_css_url=asset_url("swagger-ui.css"),
        swagger_favicon_url=asset_url("favicon.png"),
        # Off: the default would show a badge fetched from swagger.io's online validator.
        swagger_ui_parameters={"validatorUrl": None},
    )
    html = bytes(page.body).decode().replace("<script>", f'<script nonce="{nonce}">')
    return _page(html, policy(nonce))


def _redoc(openapi_url: str, title: str) -> HTMLResponse:
    """ReDoc is started by a script of the page rather than from the ``<redoc>`` element
    FastAPI's page uses: the nonce its styles need can only be handed over in code (browsers
    hide an element's ``nonce`` attribute from scripts). No web fonts are loaded; the
    Redocly logo its footer asks a CDN for is refused by the CSP."""
    nonce = secrets.token_urlsafe(16)
    # Native scrollbars: the styles of ReDoc's own scrollbar are written before it has the
    # nonce, so the CSP refuses them.
    options = json.dumps({"nonce": nonce, "nativeScrollbars": True}).replace("<", "\\u003c")
    url = json.dumps(openapi_url).replace("<", "\\u003c")
    html = f"""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - ReDoc</title>
<link rel="icon" href="{asset_url("favicon.png")}">
<style nonce="{nonce}">body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<noscript>ReDoc needs JavaScript.</noscript>
<div id="redoc"></div>
<script src="{asset_url("redoc.standalone.js")}"></script>
<script nonce="{nonce}">Redoc.init({url}, {options}, document.getElementById("redoc"));</script>
</body>
</html>
"""
    # Its search runs in a worker made from a blob: of its own code.
    return _page(html, policy(nonce, "worker-src blob:"))


async def _asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _TYPES:
        raise HTTPException(404)
    return FileResponse(_FOLDER / name, media_type=_TYPES[name], headers=_ASSET_HEADERS)


def install_docs(app: FastAPI, openapi_url: str) -> None:
    """Serve Swagger UI at ``/swagger-ui``, ReDoc at ``/redoc`` and their assets."""

    async def swagger_ui(_: Request) -> Response:
        return _swagger_ui(openapi_url, app.title)

    async def redoc(_: Request) -> Response:
        return _redoc(openapi_url, app.title)

    app.add_route(SWAGGER_UI, swagger_ui, include_in_schema=False)
    app.add_route(REDOC, redoc, include_in_schema=False)
    app.add_route(ASSETS + "/{name}", _asset, include_in_schema=False)
