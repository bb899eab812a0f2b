"""MEDA_ALLOWED_REGISTRIES: API clients may pull, push and run from the listed registries only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from meda_api import create_app
from meda_core.backends.manager import PluginManager
from meda_core.facade import Meda
from meda_core.settings import Settings
from meda_core.testing.fakes import FakePlugin

ALLOWED = "127.0.0.1:1"


@pytest.fixture
def meda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Meda]:
    monkeypatch.setenv("MEDA_ALLOWED_REGISTRIES", f" {ALLOWED} , registry.example ")
    plugins = PluginManager()
    plugins.add_plugin("fake", FakePlugin())
    meda = Meda(Settings(home=tmp_path / "home"), plugins)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"not really a kernel")
    meda.images.import_files("default", kernel=kernel)
    yield meda
    meda.vms.delete_all()


@pytest.fixture
def client(meda: Meda) -> Iterator[TestClient]:
    with TestClient(
        create_app(meda), raise_server_exceptions=False, base_url="http://localhost"
    ) as client:
        yield client


REFUSED = [
    ("/api/v1/images/pull", {"image": "attacker.example/meda/x:v1"}),
    ("/api/v1/images/pull", {"image": "x:v1", "registry": "attacker.example"}),
    ("/api/v1/images/pull", {"image": "x:v1"}),  # the default registry is not listed either
    ("/api/v1/images/push", {"name": "default", "image": "attacker.example/meda/x:v1"}),
    ("/api/v1/images/push", {"name": "default", "image": "x:v1", "registry": "127.0.0.1:2"}),
    ("/api/v1/images/run", {"image": "attacker.example/meda/x:v1", "name": "r1"}),
    ("/api/v1/images/run", {"image": "x:v1", "registry": "attacker.example", "name": "r1"}),
]


@pytest.mark.parametrize(("path", "body"), REFUSED)
def test_a_registry_not_listed_is_refused_and_never_contacted(
    client: TestClient, meda: Meda, path: str, body: dict[str, str]
) -> None:
    before = [i.ref for i in meda.images.list()]
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == "INVALID_REQUEST" and "MEDA_ALLOWED_REGISTRIES" in error["error"]
    assert error["details"]["allowed"] == [ALLOWED, "registry.example"]
    assert [i.ref for i in meda.images.list()] == before
    assert meda.vms.list() == []


def test_listed_registries_and_local_images_still_work(client: TestClient) -> None:
    remote = f"{ALLOWED}/meda/default:v1"
    pushed = client.post("/api/v1/images/push", json={"name": "default", "image": remote})
    assert pushed.status_code == 200, pushed.text
    pulled = client.post("/api/v1/images/pull", json={"image": remote})
    assert pulled.status_code == 200, pulled.text
    run = client.post("/api/v1/images/run", json={"image": "default", "name": "local"})
    assert run.status_code == 201, run.text
