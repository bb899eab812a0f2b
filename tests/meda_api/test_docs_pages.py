"""Swagger UI and ReDoc come whole from meda: their pages name no other host, their assets are
meda's to serve (only those, typed, cached), and their CSP lets nothing else in."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from meda_api import create_app
from meda_core.facade import Meda
from tests.conftest import ServeApi
from tests.meda_api import rawhttp

PAGES = ("/swagger-ui", "/redoc")
TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}


@pytest.fixture
def client(fake_meda: Meda) -> Iterator[TestClient]:
    with TestClient(create_app(fake_meda), base_url="http://localhost") as client:
        yield client


def linked(html: str) -> list[str]:
    """Every URL a page loads: its scripts, styles and icons."""
    return re.findall(r'(?:src|href)="([^"]*)"', html)


def directives(csp: str) -> dict[str, list[str]]:
    return {d.split()[0]: d.split()[1:] for d in csp.split("; ")}


@pytest.mark.parametrize("page", PAGES)
def test_a_docs_page_loads_everything_from_meda(client: TestClient, page: str) -> None:
    answer = client.get(page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    urls = linked(answer.text)
    assert urls and all(url.startswith("/static/docs/") for url in urls), urls
    assert "://" not in answer.text.replace("http://www.w3.org", "")  # no CDN, no web fonts
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
        assert asset.headers["content-type"] == TYPES[PurePosixPath(urlsplit(url).path).suffix]
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert "/api/v1/openapi.json" in answer.text


@pytest.mark.parametrize("page", PAGES)
def test_a_docs_page_runs_only_its_own_code(client: TestClient, page: str) -> None:
    """The CSP allows scripts and styles from meda, and inline ones only with the nonce
    the page carries: an injected script or a script from elsewhere would not run."""
    first, second = client.get(page), client.get(page)
    policy = directives(first.headers["content-security-policy"])
    nonce = re.search(r"'nonce-([^']+)'", first.headers["content-security-policy"])
    assert nonce is not None
    assert policy["default-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
    assert policy["script-src"] == ["'self'", f"'nonce-{nonce[1]}'"]
    assert policy["style-src"] == ["'self'", f"'nonce-{nonce[1]}'"]
    assert policy["connect-src"] == ["'self'"] and policy["img-src"] == ["'self'", "data:"]
    assert not any("unsafe" in source for sources in policy.values() for source in sources)
    inline = re.findall(r"<(?:script|style)( [^>]*)?>", first.text)
    assert inline and all(
        f'nonce="{nonce[1]}"' in attributes or "src=" in attributes for attributes in inline
    )
    assert nonce[1] not in second.headers["content-security-policy"]  # fresh every time
    assert first.headers["x-frame-options"] == "DENY"
    assert first.headers["cache-control"] == "no-store"


def test_other_answers_keep_their_one_policy(client: TestClient) -> None:
    for path in ("/api/v1/health", "/static/docs/swagger-ui.css"):
        assert client.get(path).headers.get_list("content-security-policy") == [
            "frame-ancestors 'none'"
        ]
    assert len(client.get("/swagger-ui").headers.get_list("content-security-policy")) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/static/docs/",
        "/static/docs",
        "/static/docs/core.py",
        "/static/docs/__init__.py",
        "/static/docs/..%2fcore.py",
        "/static/docs/%2e%2e/core.py",
        "/static/docs/%2e%2e%2fcore.py",
        "/static/docs/..%2f..%2fmeda_api%2fapp.py",
        "/static/docs/swagger-ui.css%00.py",
        "/static/docs/SWAGGER-UI.CSS",
        "/static/docs/swagger-ui.css.map",
    ],
)
def test_only_the_bundled_assets_are_served(
    serve_api: ServeApi, fake_meda: Meda, path: str
) -> None:
    """No listing, no other file of the package, no way out of it: sent as raw bytes, so
    no client tidies the path first."""
    url = serve_api(fake_meda)
    with rawhttp.connect(url) as sock:
        rawhttp.send_head(sock, "GET", path, "Connection: close")
        answer = rawhttp.read_answer(sock)
    assert answer.status == 404, (path, answer)
    assert b'"code":"NOT_FOUND"' in answer.body


def test_assets_are_read_only(client: TestClient) -> None:
    assert client.head("/static/docs/swagger-ui-bundle.js").status_code == 200
    for method in ("POST", "PUT", "DELETE"):
        answer = client.request(method, "/static/docs/swagger-ui-bundle.js")
        assert answer.status_code == 405 and answer.json()["code"] == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize("path", [*PAGES, "/static/docs/swagger-ui-bundle.js"])
def test_docs_keep_the_web_guards(client: TestClient, path: str) -> None:
    """A rebound name gets 421 and a foreign page's request 403, as on every route."""
    rebound = client.get(path, headers={"Host": "attacker.example:7777"})
    assert rebound.status_code == 421 and rebound.json()["code"] == "MISDIRECTED_REQUEST"
    foreign = client.get(path, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403 and foreign.json()["code"] == "FORBIDDEN"
    own = client.get(path, headers={"Origin": "http://localhost"})
    assert own.status_code == 200


def test_docs_are_not_in_the_api_document(client: TestClient) -> None:
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/static", "/swagger-ui", "/redoc"))]
