from __future__ import annotations

from fastapi.testclient import TestClient

from meda_api import create_app
from meda_core.facade import Meda


def test_health(fake_meda: Meda) -> None:
    body = (
        TestClient(create_app(fake_meda), base_url="http://localhost").get("/api/v1/health").json()
    )
    assert body["status"] == "healthy" and body["version"] and body["timestamp"]


def test_openapi_and_swagger(fake_meda: Meda) -> None:
    client = TestClient(create_app(fake_meda), base_url="http://localhost")
    spec = client.get("/api/v1/openapi.json").json()
    assert {"/api/v1/vms", "/api/v1/vms/{name}", "/api/v1/vms/{name}/start"} <= set(spec["paths"])
    assert "201" in spec["paths"]["/api/v1/vms"]["post"]["responses"]
    assert "swagger-ui" in client.get("/swagger-ui").text


def test_plugins_lists_backends(fake_meda: Meda) -> None:
    body = (
        TestClient(create_app(fake_meda), base_url="http://localhost").get("/api/v1/plugins").json()
    )
    assert {(b["role"], b["name"]) for b in body["backends"]} == {
        ("agent", "fake"),
        ("hypervisor", "fake"),
        ("network", "fake"),
        ("registry", "fake"),
        ("storage", "fake"),
    }


def test_images_list(fake_meda: Meda, fake_image: str) -> None:
    body = (
        TestClient(create_app(fake_meda), base_url="http://localhost").get("/api/v1/images").json()
    )
    assert body["count"] == 1 and body["images"][0]["name"] == "default"
