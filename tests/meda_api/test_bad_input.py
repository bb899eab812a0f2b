"""Hostile input: every case is a 4xx in the seed's error body, and the host is untouched."""

from __future__ import annotations

import os
import socket

import pytest
from fastapi.testclient import TestClient

from meda_core.facade import Meda
from meda_core.host.processes import parent_pid
from meda_core.testing.host import processes_mentioning

LONG = "a" * 300


@pytest.fixture
def running(client: TestClient) -> str:
    """A running VM, for the cases that need one."""
    assert client.post("/api/v1/vms", json={"name": "victim"}).status_code == 201
    assert client.post("/api/v1/vms/victim/start").status_code == 200
    return "victim"


def host_state(meda: Meda) -> tuple[object, ...]:
    """What a request could have changed: records, files, leases, forwards, processes."""
    home = meda.settings.home
    files = sorted(str(p.relative_to(home)) for p in home.rglob("*") if ".lock" not in p.name)
    vms = [(vm.name, vm.state, vm.runtime) for vm in meda.store.list_vms()]
    recorded = {runtime.pid for _, _, runtime in vms if runtime is not None}
    strays = [pid for pid in _fake_processes_of_this_run() if pid not in recorded]
    return (vms, files, meda.store.forwards(), strays)


def _fake_processes_of_this_run() -> list[int]:
    """The fake hypervisor's processes this pytest started (not another run's beside it)."""
    return [pid for pid in processes_mentioning("meda-fake-") if parent_pid(pid) == os.getpid()]


def assert_refused(response, status: int, meda: Meda, before: tuple[object, ...]) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "code", "details"}
    assert body["details"]["message"] == body["error"]
    assert host_state(meda) == before


BAD_NAMES = ["..", "../etc", "a/b", "/etc/passwd", "ünïcödé", "名前", LONG, "", "-x", "UP", "a b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_in_a_body(client: TestClient, fake_meda: Meda, name: str) -> None:
    before = host_state(fake_meda)
    for path, extra in (("/api/v1/vms", {}), ("/api/v1/images/run", {"image": "default"})):
        response = client.post(path, json={"name": name, **extra})
        assert_refused(response, 400, fake_meda, before)


@pytest.mark.parametrize(
    "name", ["..", "%2e%2e", "..%2F..%2Fetc", "%2Fetc", "ünïcödé", LONG, "UP", "a%00b"]
)
@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("DELETE", ""), ("POST", "/start"), ("POST", "/stop"), ("GET", "/ip")],
)
def test_bad_names_in_a_path(
    client: TestClient, fake_meda: Meda, running: str, name: str, method: str, suffix: str
) -> None:
    before = host_state(fake_meda)
    response = client.request(method, f"/api/v1/vms/{name}{suffix}")
    # A name that decodes to more path segments matches no route: 404, else invalid: 400.
    assert response.status_code in (400, 404), response.text
    assert_refused(response, response.status_code, fake_meda, before)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("memory", "-1G"),
        ("memory", "1e9T"),
        ("memory", "0"),
        ("memory", "16M"),
        ("memory", "1.5G"),
        ("memory", "9" * 40),
        ("memory", "2X"),
        ("memory", 2048),
        ("disk", "-1G"),
        ("disk", "1e9T"),
        ("disk", "0"),
        ("disk", ""),
        ("cpus", 0),
        ("cpus", -1),
        ("cpus", 1000),
        ("cpus", "2"),
        ("cpus", 1.5),
        ("force", 0),
        ("force", "yes"),
        ("image", "../../etc/passwd"),
        ("image", "/abs"),
    ],
)
def test_bad_values(client: TestClient, fake_meda: Meda, field: str, value: object) -> None:
    before = host_state(fake_meda)
    response = client.post("/api/v1/vms", json={"name": "ok", field: value})
    assert_refused(response, 400, fake_meda, before)


@pytest.mark.parametrize("user_data", ["/etc/passwd", "../../etc/shadow", "~/.ssh/id_rsa"])
def test_user_data_paths_outside_the_allowed_dirs(
    client: TestClient, fake_meda: Meda, user_data: str
) -> None:
    before = host_state(fake_meda)
    response = client.post("/api/v1/vms", json={"name": "ok", "user_data": user_data})
    assert_refused(response, 400, fake_meda, before)
    assert "root:" not in response.text  # never echoes a file it refused to read


@pytest.mark.parametrize(
    ("forward", "status"),
    [
        ({"host_port": 22, "guest_port": 22}, 400),  # privileged unless the operator allows
        ({"host_port": 0, "guest_port": 80}, 400),
        ({"host_port": 70000, "guest_port": 80}, 400),
        ({"host_port": 8080, "guest_port": 80, "protocol": "icmp"}, 400),
        ({"host_port": "8080", "guest_port": 80}, 400),
    ],
)
def test_bad_forwards(
    client: TestClient, fake_meda: Meda, running: str, forward: dict[str, object], status: int
) -> None:
    before = host_state(fake_meda)
    response = client.post(f"/api/v1/vms/{running}/port-forward", json=forward)
    assert_refused(response, status, fake_meda, before)


def test_a_host_port_in_use_is_409_and_changes_nothing(
    client: TestClient, fake_meda: Meda, running: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = host_state(fake_meda)
        response = client.post(
            f"/api/v1/vms/{running}/port-forward", json={"host_port": port, "guest_port": 80}
        )
        assert_refused(response, 409, fake_meda, before)


def test_an_oversized_body_is_413_and_changes_nothing(client: TestClient, fake_meda: Meda) -> None:
    before = host_state(fake_meda)
    response = client.post("/api/v1/vms", json={"name": "big", "user_data": "x" * (3 << 20)})
    assert_refused(response, 413, fake_meda, before)


def test_a_forged_image_path_changes_nothing(client: TestClient, fake_meda: Meda) -> None:
    before = host_state(fake_meda)
    for ref in ("..", "../../etc", "a:..", "%2e%2e"):
        response = client.delete(f"/api/v1/images/{ref}")
        assert response.status_code in (400, 404), response.text
        assert_refused(response, response.status_code, fake_meda, before)
