"""``PUT``/``GET /vms/{name}/files``: raw bodies streamed with their own cap, tar for
directories, against the fake hypervisor and agent; a hostile client included."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from meda_core.facade import Meda
from tests.conftest import ServeApi
from tests.meda_api.rawhttp import Answer, answered, read_answer

FILES = "/api/v1/vms/vm1/files"
OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def vm(running_vm: str) -> str:
    return running_vm


@pytest.fixture
def client(client: TestClient, vm: str) -> TestClient:
    """The API (conftest's), with the running VM ``vm1``."""
    return client


def test_a_binary_file_round_trip_past_the_json_cap(client: TestClient) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than the 2 MiB JSON bodies may have
    put = client.put(
        FILES, params={"path": "/blob.bin", "mode": "0600"}, content=data, headers=OCTETS
    )
    assert put.status_code == 201, put.text
    assert put.json() == {
        "path": "/blob.bin",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    got = client.get(FILES, params={"path": "/blob.bin"})
    assert got.status_code == 200 and got.headers["content-type"] == "application/octet-stream"
    assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_directory_as_tar(client: TestClient) -> None:
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as tar:
        info = tarfile.TarInfo("d/x.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"xyz"))
    put = client.put(
        FILES, params={"path": "/srv", "archive": "tar"}, content=packed.getvalue(), headers=OCTETS
    )
    assert put.status_code == 201, put.text
    got = client.get(FILES, params={"path": "/srv", "archive": "tar"})
    with tarfile.open(fileobj=io.BytesIO(got.content)) as tar:
        member = tar.extractfile("./d/x.txt")
        assert member is not None and member.read() == b"xyz"
    assert client.get(FILES, params={"path": "/srv"}).status_code == 400  # not a regular file
    garbage = client.put(
        FILES, params={"path": "/srv", "archive": "tar"}, content=b"not a tar", headers=OCTETS
    )
    assert garbage.status_code == 400


@pytest.mark.parametrize(
    "params",
    [
        {"path": "relative"},
        {"path": "/a\x00b"},
        {"path": "/../../../etc/meda-escape"},  # out of the fake's scratch root
        {"path": "/x", "mode": "8888"},
        {"path": "/x", "mode": "abc"},
        {"path": "/x", "owner": "root"},
        {"path": "/x", "archive": "zip"},
        {},
    ],
)
def test_bad_paths_and_options_are_400(client: TestClient, params: dict[str, str]) -> None:
    answer = client.put(FILES, params=params, content=b"x", headers=OCTETS)
    assert answer.status_code == 400, answer.text
    assert not os.path.exists("/etc/meda-escape")


def test_statuses(client: TestClient, fake_meda: Meda) -> None:
    assert client.get(FILES, params={"path": "/missing"}).status_code == 404
    assert client.get("/api/v1/vms/nope/files", params={"path": "/x"}).status_code == 404
    assert client.put(FILES, params={"path": "/x"}, json={"a": 1}).status_code == 415
    untyped = client.put(FILES, params={"path": "/x"}, content=b"x")
    assert untyped.status_code == 415
    assert "application/octet-stream" in untyped.json()["error"]  # what this body needs
    assert client.post("/api/v1/vms/vm1/stop", params={"force": True}).status_code == 200
    assert client.get(FILES, params={"path": "/x"}).status_code == 409


def test_over_the_cap_by_its_declared_length(client: TestClient, fake_meda: Meda) -> None:
    fake_meda.settings.file_max_bytes = 1000
    answer = client.put(FILES, params={"path": "/big"}, content=b"x" * 1001, headers=OCTETS)
    assert answer.status_code == 413 and answer.json()["code"] == "PAYLOAD_TOO_LARGE"


def test_over_the_cap_sent_chunked_without_a_length(
    fake_meda: Meda, vm: str, serve_api: ServeApi
) -> None:
    """A body that says nothing of its size is counted as it comes: 413, nothing left."""
    fake_meda.settings.file_max_bytes = 100_000
    root = fake_meda.vms.get("vm1").vm_dir / "fake-agent-root"

    def body() -> Iterator[bytes]:
        for _ in range(50):
            yield b"y" * 10_000

    with httpx.Client(base_url=serve_api(fake_meda), timeout=30) as http:
        answer = http.put(FILES, params={"path": "/big"}, content=body(), headers=OCTETS)
        assert "content-length" not in answer.request.headers
    assert answer.status_code == 413
    assert not any(root.iterdir()) if root.exists() else True


def test_the_openapi_document_has_the_raw_bodies_and_the_stream(client: TestClient) -> None:
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    put = paths["/api/v1/vms/{name}/files"]["put"]
    assert "application/octet-stream" in put["requestBody"]["content"]
    assert {"201", "413", "422"} <= set(put["responses"])
    get = paths["/api/v1/vms/{name}/files"]["get"]
    assert "application/octet-stream" in get["responses"]["200"]["content"]
    stream = paths["/api/v1/vms/{name}/exec/stream"]["post"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert {"408", "422"} <= set(paths["/api/v1/vms/{name}/exec"]["post"]["responses"])
    stdin = paths["/api/v1/vms/{name}/exec/{session}/stdin"]["post"]
    assert "application/octet-stream" in stdin["requestBody"]["content"]


def slow_upload(url: str, path: str) -> socket.socket:
    """A chunked octet-stream PUT that sends one byte of its body, then nothing."""
    parts = urlsplit(url)
    conn = socket.create_connection((parts.hostname, parts.port))  # type: ignore[arg-type]
    conn.sendall(
        f"PUT {FILES}?path={path} HTTP/1.1\r\nHost: localhost\r\n"
        "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        "1\r\nx\r\n".encode()
    )
    return conn


def answer(conn: socket.socket, within: float) -> Answer | None:
    """The server's answer if it begins within ``within`` seconds (None: it did not)."""
    return read_answer(conn) if answered(conn, within) else None


def test_trickling_uploads_leave_the_api_responsive(
    fake_meda: Meda, vm: str, serve_api: ServeApi
) -> None:
    """More trickling uploads than the shared pool has threads (anyio's 40): other
    routes, exec included, still answer; one client's uploads beyond its cap get 429."""
    fake_meda.settings.max_waits, fake_meda.settings.max_waits_per_client = 100, 50
    url = serve_api(fake_meda)
    held = [slow_upload(url, f"/f{i}") for i in range(48)]
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            for conn in held:  # all under way: none answered yet
                assert answer(conn, 0.05) is None
            assert http.get("/api/v1/vms").status_code == 200
            run = http.post("/api/v1/vms/vm1/exec", json={"command": ["echo", "ok"]})
            assert run.status_code == 200 and run.json()["stdout"] == "ok\n"
            held += [slow_upload(url, f"/g{i}") for i in range(3)]
            refused = answer(held[-1], 5)  # the 51st: 50 per client
            assert refused is not None and refused.status == 429
    finally:
        for conn in held:
            conn.close()


def test_an_upload_that_pauses_too_long_is_408(
    fake_meda: Meda, vm: str, serve_api: ServeApi
) -> None:
    fake_meda.settings.body_idle_timeout = 0.5
    conn = slow_upload(serve_api(fake_meda), "/f")
    try:
        reply = answer(conn, 5)
        assert reply is not None and reply.status == 408, reply
        assert b"MEDA_BODY_IDLE_TIMEOUT" in reply.body
    finally:
        conn.close()
