"""The seed's VM endpoints: shapes and status codes, against the fake backends."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from meda_api import create_app
from meda_core.facade import Meda
from meda_core.models import VMState

SEED_CREATE = {"name": "api-test", "memory": "2G", "cpus": 4, "disk": "20G"}


def _is_error_body(body: dict, code: str) -> bool:  # type: ignore[type-arg]
    return (
        set(body) == {"error", "code", "details"}
        and body["code"] == code
        and isinstance(body["error"], str)
        and body["details"]["message"] == body["error"]
    )


def test_seed_sequence(client: TestClient) -> None:
    created = client.post("/api/v1/vms", json=SEED_CREATE)
    assert created.status_code == 201
    assert created.json()["success"] is True
    assert created.json()["message"] == "Successfully created VM: api-test"

    listed = client.get("/api/v1/vms").json()
    assert listed["count"] == 1
    assert listed["vms"][0]["ip"] == "10.99.0.2"
    assert {k: listed["vms"][0][k] for k in ("name", "state", "memory", "disk")} == {
        "name": "api-test",
        "state": "stopped",
        "memory": "2G",
        "disk": "20G",
    }

    assert client.post("/api/v1/vms/api-test/start").status_code == 200
    got = client.get("/api/v1/vms/api-test").json()
    assert got["state"] == "running"
    assert set(got["details"]) >= {"subnet", "mac", "tap_device", "memory", "disk_size", "vm_dir"}
    assert got["details"]["accelerator"] == "none"

    assert client.post("/api/v1/vms/api-test/stop").json()["vm"]["state"] == "stopped"
    assert client.delete("/api/v1/vms/api-test").status_code == 200
    assert client.get("/api/v1/vms").json() == {"vms": [], "count": 0}


def test_missing_vm_is_404_everywhere(client: TestClient) -> None:
    for method, path in [
        ("GET", "/api/v1/vms/nope"),
        ("POST", "/api/v1/vms/nope/start"),
        ("POST", "/api/v1/vms/nope/stop"),
        ("DELETE", "/api/v1/vms/nope"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404, path
        assert _is_error_body(response.json(), "VM_NOT_FOUND")


def test_name_clash_is_409_unless_force(client: TestClient) -> None:
    assert client.post("/api/v1/vms", json=SEED_CREATE).status_code == 201
    clash = client.post("/api/v1/vms", json=SEED_CREATE)
    assert clash.status_code == 409 and _is_error_body(clash.json(), "VM_EXISTS")
    assert client.post("/api/v1/vms", json=SEED_CREATE | {"force": True}).status_code == 201


def test_wrong_state_is_409(client: TestClient) -> None:
    client.post("/api/v1/vms", json=SEED_CREATE)
    response = client.post("/api/v1/vms/api-test/stop")
    assert response.status_code == 409 and _is_error_body(response.json(), "INVALID_STATE")


@pytest.mark.parametrize(
    "body",
    [
        {"name": "../etc"},
        {"name": "Bad_Name"},
        {"name": "ok", "memory": "lots"},
        {"name": "ok", "cpus": 0},
        {"name": "ok", "disk": "-1G"},
        {"name": "ok", "unknown": 1},
        {"memory": "1G"},
        [],
    ],
)
def test_invalid_parameters_are_400_with_the_seed_body(
    client: TestClient, fake_meda: Meda, body: object
) -> None:
    response = client.post("/api/v1/vms", json=body)
    assert response.status_code == 400, response.text
    assert _is_error_body(response.json(), "INVALID_REQUEST")
    assert fake_meda.vms.list() == []
    assert not fake_meda.settings.vms_dir.exists() or not any(fake_meda.settings.vms_dir.iterdir())


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/api/v1/vms", content=b'{"name": "x",', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert _is_error_body(response.json(), "INVALID_REQUEST")
    assert "malformed JSON" in response.json()["error"]


def test_invalid_name_in_path_is_400(client: TestClient) -> None:
    response = client.get("/api/v1/vms/Bad..Name")
    assert response.status_code == 400 and _is_error_body(response.json(), "INVALID_REQUEST")


def test_unknown_route_uses_the_error_body(client: TestClient) -> None:
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404 and _is_error_body(response.json(), "NOT_FOUND")


def test_no_default_image_is_404_with_a_hint(fake_meda: Meda) -> None:
    with TestClient(create_app(fake_meda), base_url="http://localhost") as client:
        response = client.post("/api/v1/vms", json={"name": "x"})
    assert response.status_code == 404
    assert "meda images import" in response.json()["error"]


def test_unavailable_backend_is_503(fake_meda: Meda, fake_image: str) -> None:
    fake_meda.settings.hypervisor = "cloud-hypervisor"
    with TestClient(create_app(fake_meda), base_url="http://localhost") as client:
        response = client.post("/api/v1/vms", json={"name": "x"})
    assert response.status_code == 503
    assert _is_error_body(response.json(), "BACKEND_UNAVAILABLE")


def test_user_data_over_the_api(client: TestClient, fake_meda: Meda, tmp_path) -> None:  # type: ignore[no-untyped-def]
    content = "#cloud-config\nruncmd: [[touch, /x]]\n"
    ok = client.post("/api/v1/vms", json={"name": "ud1", "user_data": content})
    assert ok.status_code == 201 and fake_meda.vms.get("ud1").user_data == content
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "ud").write_text(content)
    fake_meda.settings.user_data_dirs = str(allowed)
    by_path = client.post("/api/v1/vms", json={"name": "ud2", "user_data": str(allowed / "ud")})
    assert by_path.status_code == 201 and fake_meda.vms.get("ud2").user_data == content
    forbidden = client.post("/api/v1/vms", json={"name": "ud3", "user_data": "/etc/passwd"})
    assert forbidden.status_code == 400 and "not in a directory" in forbidden.json()["error"]
    assert [vm["name"] for vm in client.get("/api/v1/vms").json()["vms"]] == ["ud1", "ud2"]


def test_plan_is_a_dry_run(client: TestClient, fake_meda: Meda) -> None:
    client.post("/api/v1/vms", json={"name": "planned"})
    plan = client.get("/api/v1/vms/planned/plan")
    assert plan.status_code == 200 and plan.json() == {"hypervisor": "fake"}
    assert client.get("/api/v1/vms/planned").json()["state"] == "stopped"


def test_plan_for_an_unknown_hypervisor_is_400(client: TestClient) -> None:
    client.post("/api/v1/vms", json={"name": "planned"})
    response = client.get("/api/v1/vms/planned/plan", params={"hypervisor": "no-such"})
    assert response.status_code == 400 and _is_error_body(response.json(), "INVALID_REQUEST")
    assert "fake" in response.json()["details"]["installed"]


def test_the_server_watches_its_vms_while_it_serves(fake_meda: Meda, fake_image: str) -> None:
    """The lifespan starts the watcher: a guest whose process exits shows stopped with no
    read settling it (the store says so first); at shutdown the watcher goes."""
    with TestClient(create_app(fake_meda), base_url="http://localhost") as client:
        assert fake_meda.vms.watched
        assert client.post("/api/v1/vms", json={"name": "vm1"}).status_code == 201
        pid = client.post("/api/v1/vms/vm1/start").json()["vm"]["details"]["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 1
        while fake_meda.store.require_vm("vm1").state != VMState.STOPPED:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.get("/api/v1/vms/vm1").json()["state"] == "stopped"
    assert not fake_meda.vms.watched
    assert "meda-watcher" not in {thread.name for thread in threading.enumerate()}


def test_reads_of_a_watched_store_skip_the_worker_threads(
    client: TestClient, fake_meda: Meda, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While watched, a list or get only reads the store: answered on the event loop; a
    meda not watched reconciles (asks the host), in a worker thread like any plain call."""
    threads: list[str] = []
    listing = fake_meda.vms.list_view

    def list_view(view: Any) -> Any:
        threads.append(threading.current_thread().name)
        return listing(view)

    monkeypatch.setattr(fake_meda.vms, "list_view", list_view)
    assert client.get("/api/v1/vms").status_code == 200
    fake_meda.unwatch()
    assert client.get("/api/v1/vms").status_code == 200
    fake_meda.watch()
    worker = "AnyIO worker thread"
    assert [name == worker for name in threads] == [False, True]
