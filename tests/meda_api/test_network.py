"""``/ip``, ``/port-forward`` and ``/network/cleanup``, against the fake backends unless said."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from meda_api import create_app
from meda_core.facade import Meda
from meda_core.settings import Settings


@pytest.fixture
def client(fake_meda: Meda, fake_image: str) -> Iterator[TestClient]:
    with TestClient(
        create_app(fake_meda), raise_server_exceptions=False, base_url="http://localhost"
    ) as client:
        client.post("/api/v1/vms", json={"name": "web"})
        yield client


def test_ip_is_the_seed_shape(client: TestClient) -> None:
    assert client.get("/api/v1/vms/web/ip").json() == {"vm": "web", "ip": "10.99.0.2"}
    assert client.get("/api/v1/vms/nope/ip").status_code == 404


def test_port_forward_lifecycle(client: TestClient) -> None:
    added = client.post("/api/v1/vms/web/port-forward", json={"host_port": 18080, "guest_port": 80})
    assert added.status_code == 201, added.text
    forward = {
        "host_port": 18080,
        "guest_port": 80,
        "protocol": "tcp",
        # Where to connect, and everywhere the port answers (the fake backend: everywhere).
        "address": "127.0.0.1:18080",
        "netns": None,
        "listeners": [{"address": "0.0.0.0:18080", "netns": None, "by": "fake"}],
    }
    assert added.json()["forward"] == forward
    assert "connect to 127.0.0.1:18080" in added.json()["message"]
    listed = client.get("/api/v1/vms/web/port-forward").json()
    assert listed["count"] == 1 and listed["forwards"] == [forward]
    details = client.get("/api/v1/vms/web").json()["details"]
    assert details["port_forwards"] == [{"host_port": 18080, "guest_port": 80, "protocol": "tcp"}]
    udp = client.post(
        "/api/v1/vms/web/port-forward",
        json={"host_port": 18080, "guest_port": 53, "protocol": "udp"},
    )
    assert udp.status_code == 201  # same number, other protocol
    assert client.delete("/api/v1/vms/web/port-forward/18080").status_code == 200
    assert client.delete("/api/v1/vms/web/port-forward/18080").status_code == 404
    assert client.get("/api/v1/vms/web/port-forward").json()["count"] == 1


def test_forwarded_twice_is_409(client: TestClient) -> None:
    client.post("/api/v1/vms", json={"name": "other"})
    body = {"host_port": 18081, "guest_port": 80}
    assert client.post("/api/v1/vms/web/port-forward", json=body).status_code == 201
    clash = client.post("/api/v1/vms/other/port-forward", json=body)
    assert clash.status_code == 409 and clash.json()["code"] == "CONFLICT"
    assert "'web'" in clash.json()["error"]


def test_port_in_use_on_the_host_is_409(client: TestClient) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        response = client.post(
            "/api/v1/vms/web/port-forward", json={"host_port": port, "guest_port": 80}
        )
    assert response.status_code == 409 and "in use" in response.json()["error"]
    assert client.get("/api/v1/vms/web/port-forward").json()["count"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"host_port": 80, "guest_port": 80},
        {"host_port": 0, "guest_port": 80},
        {"host_port": 70000, "guest_port": 80},
        {"host_port": 8080},
        {"host_port": 8080, "guest_port": 80, "protocol": "sctp"},
        {"host_port": "8080; rm -rf /", "guest_port": 80},
    ],
)
def test_bad_forwards_are_400(client: TestClient, body: dict) -> None:  # type: ignore[type-arg]
    response = client.post("/api/v1/vms/web/port-forward", json=body)
    assert response.status_code == 400, response.text
    assert client.get("/api/v1/vms/web/port-forward").json()["count"] == 0


def test_privileged_port_allowed_by_the_operator(client: TestClient, fake_meda: Meda) -> None:
    fake_meda.settings.allow_privileged_ports = True
    # Port 1 is free on any sane host; the check is about policy, not availability.
    response = client.post("/api/v1/vms/web/port-forward", json={"host_port": 1, "guest_port": 80})
    assert response.status_code == 201


def test_delete_removes_forwards_and_lease(client: TestClient, fake_meda: Meda) -> None:
    client.post("/api/v1/vms/web/port-forward", json={"host_port": 18082, "guest_port": 80})
    assert client.delete("/api/v1/vms/web").status_code == 200
    assert fake_meda.store.forwards() == []
    assert fake_meda.store.leases("fake") == []


def test_forwards_show_in_every_vm_response(client: TestClient) -> None:
    client.post("/api/v1/vms/web/port-forward", json={"host_port": 18083, "guest_port": 80})
    for response in (client.post("/api/v1/vms/web/start"), client.post("/api/v1/vms/web/stop")):
        assert response.json()["vm"]["details"]["port_forwards"][0]["host_port"] == 18083


def test_cleanup_in_a_namespace_not_made_yet_finds_nothing(tmp_path: Path) -> None:
    """MEDA_NETNS that does not exist (not made yet, or gone with the last VM), even with
    MEDA_NETNS_CREATE: the real tap-bridge has nothing there to clean, and creates nothing."""
    if os.geteuid() != 0:
        pytest.skip("the tap-bridge network needs root")
    absent = f"meda-absent-{secrets.token_hex(3)}"
    meda = Meda(Settings(home=tmp_path / "home", netns=absent, netns_create=True))
    with TestClient(create_app(meda), base_url="http://localhost") as client:
        for dry_run in ("true", "false"):
            answer = client.post(f"/api/v1/network/cleanup?dry_run={dry_run}")
            assert answer.status_code == 200, answer.text
            assert answer.json()["orphans"] == [] and answer.json()["count"] == 0
            assert f"'{absent}'" in answer.json()["message"]
    assert not Path("/run/netns", absent).exists()
