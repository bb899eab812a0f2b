"""The seed's image endpoints: shapes and status codes, against the fake backends."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from meda_core.backends.roles import ImageFiles
from meda_core.facade import Meda
from meda_core.inputs.references import parse_reference
from meda_core.state.operations import Progress, no_progress
from meda_core.testing import disks

REMOTE = "127.0.0.1:1/cirunlabs/default:v1"


class Nothing(BaseModel):
    pass


def test_push_pull_run_and_the_list(client: TestClient) -> None:
    dry = client.post(
        "/api/v1/images/push", json={"name": "default", "image": REMOTE, "dry_run": True}
    )
    assert dry.status_code == 200 and dry.json()["digest"] is None
    pushed = client.post("/api/v1/images/push", json={"name": "default", "image": REMOTE})
    assert pushed.status_code == 200 and pushed.json()["digest"].startswith("sha256:")
    pulled = client.post(
        "/api/v1/images/pull", json={"image": "default:v1", "registry": "127.0.0.1:1"}
    )
    assert pulled.status_code == 200, pulled.text
    assert pulled.json()["digest"] == pushed.json()["digest"]
    run = client.post(
        "/api/v1/images/run",
        json={"image": "default:v1", "name": "r1", "memory": "512M", "cpus": 2},
    )
    assert run.status_code == 201, run.text
    assert run.json()["vm"]["state"] == "running"
    listed = client.get("/api/v1/images").json()
    assert listed["count"] == 2
    used = {i["tag"]: i["used_by"] for i in listed["images"]}
    assert used == {"latest": [], "v1": ["r1"]}


def test_used_image_cannot_be_removed_or_pruned(client: TestClient) -> None:
    client.post("/api/v1/vms", json={"name": "user"})
    response = client.delete("/api/v1/images/default")
    assert response.status_code == 409 and "user" in response.json()["error"]
    pruned = client.post("/api/v1/images/prune", json={"all": True, "force": True})
    assert pruned.status_code == 200 and pruned.json()["removed_images"] == []
    client.delete("/api/v1/vms/user")
    assert client.delete("/api/v1/images/default").status_code == 200
    assert client.get("/api/v1/images").json()["count"] == 0
    assert client.delete("/api/v1/images/default").status_code == 404


def test_prune_without_all_removes_unused_pulled_images(client: TestClient) -> None:
    client.post("/api/v1/images/push", json={"name": "default", "image": REMOTE})
    client.post("/api/v1/images/pull", json={"image": REMOTE})
    pruned = client.post("/api/v1/images/prune", json={})
    assert pruned.json()["removed_images"] == ["default:v1"]  # the local import stays
    assert [i["tag"] for i in client.get("/api/v1/images").json()["images"]] == ["latest"]


def test_create_image_from_a_vm(client: TestClient, fake_meda: Meda) -> None:
    client.post("/api/v1/vms", json={"name": "src"})
    client.post("/api/v1/vms/src/start")
    running = client.post("/api/v1/images", json={"name": "snap", "from_vm": "src"})
    assert running.status_code == 409  # never read a disk a VM is writing
    client.post("/api/v1/vms/src/stop")
    created = client.post("/api/v1/images", json={"name": "snap", "tag": "v2", "from_vm": "src"})
    assert created.status_code == 201, created.text
    assert created.json()["image"]["name"] == "snap"
    snap, base = fake_meda.images.get("snap:v2"), fake_meda.images.get("default")
    assert snap.kernel == base.kernel and base.kernel is not None and base.kernel.exists()
    again = client.post("/api/v1/images", json={"name": "snap", "tag": "v2", "from_vm": "src"})
    assert again.status_code == 409
    missing = client.post("/api/v1/images", json={"name": "x", "from_vm": "nope"})
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/images/pull", {"image": "../../etc"}),
        ("/api/v1/images/pull", {"image": "UPPER"}),
        ("/api/v1/images/push", {"name": "default", "image": "a b"}),
        ("/api/v1/images/run", {"image": "default", "name": "Bad_Name"}),
        ("/api/v1/images", {"name": "../x", "from_vm": "src"}),
        ("/api/v1/images/prune", {"all": "yes please"}),
        *[
            (path, {**body, "ready_port": port})
            for path, body in (
                ("/api/v1/images/pull", {"image": "default"}),
                ("/api/v1/images/run", {"image": "default", "name": "r"}),
                ("/api/v1/images", {"name": "x", "from_vm": "src"}),
            )
            for port in (-1, 65536, "22", True, 22.5)
        ],
    ],
)
def test_bad_requests_are_400(client: TestClient, path: str, body: dict) -> None:  # type: ignore[type-arg]
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALID_REQUEST"


def test_run_of_a_missing_image_is_404_and_leaves_no_vm(client: TestClient) -> None:
    response = client.post("/api/v1/images/run", json={"image": "nothing", "name": "r"})
    assert response.status_code == 404
    assert client.get("/api/v1/vms").json()["count"] == 0


def test_respond_async_gives_202_and_an_operation(client: TestClient) -> None:
    client.post("/api/v1/images/push", json={"name": "default", "image": REMOTE})
    accepted = client.post(
        "/api/v1/images/pull", json={"image": REMOTE}, headers={"Prefer": "respond-async"}
    )
    assert accepted.status_code == 202
    location = accepted.headers["Location"]
    assert location == f"/api/v1/operations/{accepted.json()['id']}"
    done = client.get(location, params={"wait": 10}).json()
    assert done["state"] == "succeeded", done
    assert done["result"]["image"]["tag"] == "v1"
    assert client.get("/api/v1/operations").json()["count"] >= 1
    assert client.delete(location).status_code == 409  # already finished


@pytest.mark.parametrize("meda_settings", [{"max_operations": 3}], indirect=True)
def test_a_full_operations_queue_is_503_and_starts_nothing(
    client: TestClient, fake_meda: Meda
) -> None:
    client.post("/api/v1/images/push", json={"name": "default", "image": REMOTE})
    gate = threading.Event()

    def work(progress: Progress) -> Nothing:
        gate.wait(30)
        return Nothing()

    try:
        for _ in range(3):  # the queue, filled
            fake_meda.operations.submit("pull", work)
        refused = client.post(
            "/api/v1/images/pull", json={"image": REMOTE}, headers={"Prefer": "respond-async"}
        )
    finally:
        gate.set()
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "INSUFFICIENT_CAPACITY"
    assert int(refused.headers["Retry-After"]) >= 1
    ops = client.get("/api/v1/operations").json()
    assert ops["count"] == 3
    assert {op["kind"] for op in ops["operations"]} == {"pull"}  # only the queue's own
    assert [i["tag"] for i in client.get("/api/v1/images").json()["images"]] == ["latest"]


def test_failed_background_operation_reports_the_error(client: TestClient) -> None:
    accepted = client.post(
        "/api/v1/images/pull",
        json={"image": "127.0.0.1:1/x/none:v1"},
        headers={"Prefer": "respond-async"},
    )
    done = client.get(accepted.headers["Location"], params={"wait": 10}).json()
    assert done["state"] == "failed" and done["error"]["code"] == "IMAGE_NOT_FOUND"


def test_a_pulled_disk_that_names_a_host_file_is_a_400(
    client: TestClient, fake_meda: Meda, tmp_path: Path, host_secret: Path
) -> None:
    evil = disks.backed_by(tmp_path / "evil.qcow2", host_secret)
    files = ImageFiles(disk=evil, disk_format="raw")  # the registry's claim: a raw disk
    fake_meda.backends.registry().push(files, parse_reference(REMOTE), no_progress)
    response = client.post("/api/v1/images/pull", json={"image": REMOTE})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "UNSAFE_DISK" and "backed by" in body["error"]
    assert [i["tag"] for i in client.get("/api/v1/images").json()["images"]] == ["latest"]


#: The seed's ``POST /images/run`` body, unchanged but for registry and org (no internet).
SEED_RUN = {
    "image": "default",
    "name": "seed",
    "user_data": None,
    "no_start": False,
    "memory": "512M",
    "cpus": 2,
    "disk": "10G",
}


def test_the_seeds_run_body_answers_and_says_how(client: TestClient) -> None:
    response = client.post("/api/v1/images/run", json=SEED_RUN)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["success"] and body["vm"]["state"] == "running"
    assert body["run"]["path"] == "cold" and body["run"]["template"] is None
    assert "no readiness signal" in body["run"]["reason"]
    assert "cold start" in body["message"]


def test_a_run_with_two_readiness_signals_is_refused(client: TestClient) -> None:
    body = {**SEED_RUN, "ready_agent": True, "ready_port": 22}
    response = client.post("/api/v1/images/run", json=body)
    assert response.status_code == 400, response.text
    assert "two readiness signals" in response.json()["error"]


def test_readiness_shows_in_the_image_answers(client: TestClient) -> None:
    listed = client.get("/api/v1/images").json()["images"]
    assert [i["ready_port"] for i in listed] == [None]
    client.post("/api/v1/vms", json={"name": "src"})
    created = client.post(
        "/api/v1/images", json={"name": "web", "from_vm": "src", "ready_port": 80}
    )
    assert created.status_code == 201, created.text
    assert created.json()["image"]["ready_port"] == 80
    pushed = client.post("/api/v1/images/push", json={"name": "web", "image": REMOTE})
    assert pushed.status_code == 200, pushed.text
    pulled = client.post("/api/v1/images/pull", json={"image": REMOTE, "ready_port": 22})
    assert pulled.status_code == 200 and pulled.json()["image"]["ready_port"] == 22
