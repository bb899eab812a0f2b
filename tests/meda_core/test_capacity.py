"""Admission control: 503 with Retry-After, and no two requests take the last room."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from meda_api import create_app
from meda_core import capacity
from meda_core.app import Meda
from meda_core.models import VMState


@pytest.fixture
def client(fake_meda: Meda, fake_image: str) -> Iterator[TestClient]:
    with TestClient(
        create_app(fake_meda), raise_server_exceptions=False, base_url="http://localhost"
    ) as client:
        yield client


def _room_for(fake_meda: Meda, vms: int, memory: int) -> None:
    """Leave exactly room for ``vms`` VMs of ``memory`` bytes."""
    total = capacity.host_memory()
    fake_meda.settings.reserve_memory = str(total - vms * memory)


def test_start_beyond_memory_is_503_with_retry_after(client: TestClient, fake_meda: Meda) -> None:
    _room_for(fake_meda, 1, 1 << 30)
    client.post("/api/v1/vms", json={"name": "a", "memory": "1G"})
    client.post("/api/v1/vms", json={"name": "b", "memory": "1G"})
    assert client.post("/api/v1/vms/a/start").status_code == 200
    refused = client.post("/api/v1/vms/b/start")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
    assert refused.json()["code"] == "INSUFFICIENT_CAPACITY"
    assert fake_meda.vms.get("b").state == VMState.STOPPED  # nothing half-done
    client.post("/api/v1/vms/a/stop")
    assert client.post("/api/v1/vms/b/start").status_code == 200


def test_concurrent_starts_take_exactly_the_room_there_is(
    client: TestClient, fake_meda: Meda
) -> None:
    _room_for(fake_meda, 3, 1 << 30)
    names = [f"c{i}" for i in range(8)]
    for name in names:
        client.post("/api/v1/vms", json={"name": name, "memory": "1G"})
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda n: client.post(f"/api/v1/vms/{n}/start").status_code, names))
    assert sorted(codes) == [200] * 3 + [503] * 5


def test_vcpus_count_too(client: TestClient, fake_meda: Meda) -> None:
    fake_meda.settings.cpu_overcommit = 1
    fake_meda.settings.reserve_cpus = 0
    too_many = (capacity.os.cpu_count() or 1) + 1
    client.post("/api/v1/vms", json={"name": "wide", "cpus": too_many})
    assert client.post("/api/v1/vms/wide/start").status_code == 503


def test_create_refused_when_the_disk_is_below_its_reserve(
    client: TestClient, fake_meda: Meda
) -> None:
    fake_meda.settings.reserve_disk = "1000000T"
    response = client.post("/api/v1/vms", json={"name": "nodisk"})
    assert response.status_code == 503 and "Retry-After" in response.headers
    assert fake_meda.vms.list() == []


def test_capacity_endpoint(client: TestClient) -> None:
    body = client.get("/api/v1/capacity").json()
    assert body["memory"]["total"] == capacity.host_memory()
    assert body["memory"]["available"] == body["memory"]["total"] - body["memory"]["reserved"]
    assert body["cpus"]["committed"] == 0
