"""Bearer tokens, body caps, CORS off by default (the token rules of ``meda serve`` are in
tests/meda_cli/test_serve.py)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from meda_api import create_app
from meda_core.facade import Meda


def test_token_is_required_and_checked(fake_meda: Meda) -> None:
    client = TestClient(create_app(fake_meda, token="s3cret"), base_url="http://localhost")
    missing = client.get("/api/v1/vms")
    assert missing.status_code == 401 and missing.json()["code"] == "UNAUTHORIZED"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert client.get("/api/v1/vms", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/api/v1/vms", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_no_token_on_loopback(fake_meda: Meda) -> None:
    assert (
        TestClient(create_app(fake_meda), base_url="http://localhost")
        .get("/api/v1/vms")
        .status_code
        == 200
    )


def test_oversized_bodies_are_413_and_create_nothing(fake_meda: Meda, fake_image: str) -> None:
    client = TestClient(create_app(fake_meda), base_url="http://localhost")
    huge = "#cloud-config\n# " + "x" * (3 * 1024 * 1024)
    response = client.post("/api/v1/vms", json={"name": "big", "user_data": huge})
    assert response.status_code == 413 and response.json()["code"] == "PAYLOAD_TOO_LARGE"
    assert fake_meda.vms.list() == []


def test_cors_is_off_unless_configured(fake_meda: Meda) -> None:
    headers = {"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
    closed = TestClient(create_app(fake_meda), base_url="http://localhost").options(
        "/api/v1/vms", headers=headers
    )
    assert "access-control-allow-origin" not in closed.headers
    opened = TestClient(
        create_app(fake_meda, cors_origins=["http://ok.example"]), base_url="http://localhost"
    ).get("/api/v1/vms", headers={"Origin": "http://ok.example"})
    assert opened.headers["access-control-allow-origin"] == "http://ok.example"


def test_a_request_a_browser_says_another_site_made_is_refused(client: TestClient) -> None:
    """An ``<img src=…/files?path=/>`` on a page sends no Origin, only Sec-Fetch-Site."""
    cross = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}
    for site in ("cross-site", "same-site"):
        answer = client.get("/api/v1/vms", headers={**cross, "Sec-Fetch-Site": site})
        assert answer.status_code == 403 and answer.json()["code"] == "FORBIDDEN"
    followed = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert client.get("/swagger-ui", headers=followed).status_code == 200  # a link to the docs
    assert client.get("/api/v1/vms", headers=followed).status_code == 403
    own = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
    assert client.get("/api/v1/vms", headers=own).status_code == 200
    assert client.get("/api/v1/vms", headers={"Sec-Fetch-Site": "none"}).status_code == 200


def test_every_answer_forbids_sniffing(client: TestClient) -> None:
    for path in ("/api/v1/vms", "/api/v1/vms/nope", "/api/v1/openapi.json"):
        assert client.get(path).headers["x-content-type-options"] == "nosniff"
