"""Concurrent requests: the state store's compare-and-set keeps them apart."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from meda_core.facade import Meda
from meda_core.models import VMState


def test_twenty_creates_of_one_name_give_one_201(client: TestClient, fake_meda: Meda) -> None:
    def create(_: int) -> int:
        return client.post("/api/v1/vms", json={"name": "same"}).status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(create, range(20)))
    assert sorted(codes) == [201] + [409] * 19
    assert [vm.name for vm in fake_meda.vms.list()] == ["same"]
    assert len(fake_meda.store.leases("fake")) == 1


def test_twenty_distinct_creates_give_twenty_addresses(client: TestClient, fake_meda: Meda) -> None:
    with ThreadPoolExecutor(20) as pool:
        codes = list(
            pool.map(
                lambda i: client.post("/api/v1/vms", json={"name": f"vm-{i}"}).status_code,
                range(20),
            )
        )
    assert codes == [201] * 20
    assert len({vm.ip for vm in fake_meda.vms.list()}) == 20


def test_concurrent_start_stop_delete_never_contradict_the_host(
    client: TestClient, fake_meda: Meda
) -> None:
    client.post("/api/v1/vms", json={"name": "busy"})
    actions = ["start", "stop", "start", "stop", "start", "delete"] * 4
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda a: _act(client, a), actions))
    assert set(codes) <= {200, 404, 409}
    vms = fake_meda.vms.list()
    if vms:  # whatever won, the record and the process agree
        vm = vms[0]
        running = vm.runtime is not None and fake_meda.backends.hypervisor().is_running(vm.runtime)
        assert (vm.state == VMState.RUNNING) == running


def _act(client: TestClient, action: str) -> int:
    if action == "delete":
        return client.delete("/api/v1/vms/busy").status_code
    return client.post(f"/api/v1/vms/busy/{action}").status_code
