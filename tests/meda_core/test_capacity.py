"""Admission control: 400 for what can never fit, 503 with Retry-After for what does not fit
now, and no two requests take the last room."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from meda_core.facade import Meda
from meda_core.models import VMState
from meda_core.vms import capacity


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
    cores = capacity.os.cpu_count() or 1
    client.post("/api/v1/vms", json={"name": "wide", "cpus": cores})
    client.post("/api/v1/vms", json={"name": "one", "cpus": 1})
    assert client.post("/api/v1/vms/wide/start").status_code == 200
    refused = client.post("/api/v1/vms/one/start")
    assert refused.status_code == 503 and refused.json()["code"] == "INSUFFICIENT_CAPACITY"


def test_the_seeds_four_vcpus_fit_a_two_core_host(client: TestClient, fake_meda: Meda) -> None:
    fake_meda.settings.cpu_overcommit = 2
    capacity_now = client.get("/api/v1/capacity").json()["cpus"]
    assert capacity_now["allowed"] == capacity_now["physical"] * 2
    created = client.post("/api/v1/vms", json={"name": "seed", "cpus": 4})
    if capacity_now["physical"] >= 2:
        assert created.status_code == 201, created.text


@pytest.mark.parametrize(
    ("body", "resource"),
    [
        ({"memory": "10T"}, "memory"),
        ({"disk": "500T"}, "disk"),
        ({"cpus": 64}, "vCPUs"),
    ],
)
def test_what_the_host_can_never_give_is_400_at_create(
    client: TestClient, fake_meda: Meda, body: dict[str, object], resource: str
) -> None:
    fake_meda.settings.cpu_overcommit = 1  # 64 vCPUs: more than any test host's cores
    response = client.post("/api/v1/vms", json={"name": "huge", **body})
    assert response.status_code == 400, response.text
    assert "Retry-After" not in response.headers
    error = response.json()
    assert error["code"] == "EXCEEDS_HOST" and error["details"]["resource"] == resource
    assert "more than this host can ever give" in error["error"]
    assert fake_meda.vms.list() == []  # nothing created, no disk made
    assert not (fake_meda.settings.vms_dir / "huge").exists()


def test_force_with_an_impossible_size_keeps_the_old_vm(
    client: TestClient, fake_meda: Meda
) -> None:
    assert client.post("/api/v1/vms", json={"name": "keep"}).status_code == 201
    replaced = client.post("/api/v1/vms", json={"name": "keep", "memory": "10T", "force": True})
    assert replaced.status_code == 400
    assert fake_meda.vms.get("keep").spec.memory == "1G"


def test_run_of_an_impossible_size_is_400(client: TestClient, fake_meda: Meda) -> None:
    body = {"image": "default", "name": "big-run", "memory": "10T", "cold": True}
    response = client.post("/api/v1/images/run", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "EXCEEDS_HOST"
    assert fake_meda.vms.list() == []


def test_a_vm_that_no_longer_fits_the_host_is_400_at_start_not_503(
    client: TestClient, fake_meda: Meda
) -> None:
    """An upgrade (or a smaller host, a larger reserve) can leave a VM that never fits."""
    assert client.post("/api/v1/vms", json={"name": "old", "memory": "2G"}).status_code == 201
    fake_meda.settings.reserve_memory = str(capacity.host_memory() - (1 << 30))
    refused = client.post("/api/v1/vms/old/start")
    assert refused.status_code == 400 and "Retry-After" not in refused.headers
    assert refused.json()["code"] == "EXCEEDS_HOST"
    assert fake_meda.vms.get("old").state == VMState.STOPPED


def test_create_refused_when_the_disk_is_below_its_reserve(
    client: TestClient, fake_meda: Meda
) -> None:
    free = capacity.shutil.disk_usage(fake_meda.settings.home).free
    fake_meda.settings.reserve_disk = str(free + (64 << 20))  # deleting others' disks helps
    response = client.post("/api/v1/vms", json={"name": "nodisk", "disk": "1M"})
    assert response.status_code == 503 and "Retry-After" in response.headers
    assert fake_meda.vms.list() == []


def test_capacity_endpoint(client: TestClient, fake_meda: Meda) -> None:
    fake_meda.settings.cpu_overcommit = 3
    body = client.get("/api/v1/capacity").json()
    memory, cpus = body["memory"], body["cpus"]
    assert memory["physical"] == memory["total"] == capacity.host_memory()
    assert memory["allowed"] == memory["total"] - memory["reserved"] == memory["available"]
    assert cpus["physical"] == capacity.os.cpu_count()
    assert cpus["total"] == cpus["allowed"] == cpus["physical"] * 3
    assert cpus["committed"] == 0
    assert body["disk_size"] >= body["disk_free"] > 0
    notes = " ".join(body["notes"])
    assert "MEDA_CPU_OVERCOMMIT=3" in notes and "MEDA_RESERVE_MEMORY=512M" in notes
    assert f"leaves {cpus['allowed']} for VMs" in notes
