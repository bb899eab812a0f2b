"""``POST /vms/{name}/exec``, its streamed form and stdin by session, against the fake
hypervisor and agent; a hostile client included."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from meda_core.facade import Meda
from meda_core.models import ExecRequest
from meda_core.testing.fakes import AGENT_SOCKET
from meda_core.vms.guest import caller
from tests.conftest import ServeApi

EXEC = "/api/v1/vms/vm1/exec"


@pytest.fixture
def vm(running_vm: str) -> str:
    return running_vm


@pytest.fixture
def client(client: TestClient, vm: str) -> TestClient:
    """The API (conftest's), with the running VM ``vm1``."""
    return client


@pytest.fixture
def server(fake_meda: Meda, vm: str, serve_api: ServeApi) -> Iterator[httpx.Client]:
    """A real server on loopback: streams reach the client as they are written."""
    with httpx.Client(base_url=serve_api(fake_meda), timeout=30) as http:
        yield http


def events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    kind = None
    for line in lines:
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield str(kind), json.loads(line.removeprefix("data: "))


def test_short_form(client: TestClient) -> None:
    answer = client.post(
        EXEC, json={"command": ["sh", "-c", "cat; echo e >&2; exit 5"], "stdin": "in"}
    )
    assert answer.status_code == 200
    assert answer.json() == {
        "exit_code": 5,
        "signal": None,
        "stdout": "in",
        "stderr": "e\n",
        "truncated": False,
    }


def test_statuses(client: TestClient, fake_meda: Meda) -> None:
    assert client.post("/api/v1/vms/nope/exec", json={"command": ["true"]}).status_code == 404
    timed_out = client.post(
        EXEC, json={"command": ["sh", "-c", "echo so-far; exec sleep 30"], "timeout": 0.5}
    )
    assert timed_out.status_code == 408
    assert timed_out.json()["code"] == "TIMEOUT"
    assert timed_out.json()["details"]["stdout"] == "so-far\n"
    fake_meda.settings.agent_timeout = 0.2
    (fake_meda.vms.get("vm1").vm_dir / AGENT_SOCKET).unlink()
    no_agent = client.post(EXEC, json={"command": ["true"]})
    assert no_agent.status_code == 422 and no_agent.json()["code"] == "NO_AGENT"
    assert "meda images build" in no_agent.json()["error"]
    assert client.post("/api/v1/vms/vm1/stop", params={"force": True}).status_code == 200
    assert client.post(EXEC, json={"command": ["true"]}).status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {"command": []},
        {"command": [""]},
        {"command": ["a\u0000b"]},
        {"command": ["true"], "env": {"A": "x\u0000y"}},
        {"command": ["true"], "env": {"A=B": "x"}},
        {"command": ["true"], "cwd": "relative"},
        {"command": ["true"], "timeout": 0},
        {"command": ["true"], "timeout": 10**9},
        {"command": ["x" * 100_000, "y" * 100_000, "z" * 100_000]},
        {"command": ["true"] * 5000},
        {"command": "true"},
        {"command": ["true"], "tty": True},
    ],
)
def test_bad_requests_are_400(client: TestClient, body: dict[str, Any]) -> None:
    answer = client.post(EXEC, json=body)
    assert answer.status_code == 400, answer.text
    assert client.post(EXEC + "/stream", json=body).status_code == 400


def test_the_stream_gives_output_before_the_end(server: httpx.Client) -> None:
    started = time.monotonic()
    body = {"command": ["sh", "-c", "echo first; sleep 4; echo last"], "stdin": ""}
    seen: list[tuple[str, float]] = []
    with server.stream("POST", EXEC + "/stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for kind, data in events(response.iter_lines()):
            seen.append((kind, time.monotonic() - started))
            if kind == "stdout" and base64.b64decode(data["data"]) == b"first\n":
                assert time.monotonic() - started < 3  # the command still sleeps
            if kind == "exit":
                assert data == {"exit_code": 0, "signal": None}
    assert [k for k, _ in seen] == ["started", "stdout", "stdout", "exit"]


def test_ten_megabytes_stream_whole(server: httpx.Client) -> None:
    body = {"command": ["sh", "-c", "head -c 10000000 /dev/urandom"], "stdin": ""}
    size, first_at, started = 0, None, time.monotonic()
    with server.stream("POST", EXEC + "/stream", json=body) as response:
        for kind, data in events(response.iter_lines()):
            if kind == "stdout":
                first_at = first_at or time.monotonic() - started
                size += len(base64.b64decode(data["data"]))
            last = kind, data
    assert size == 10_000_000 and last == ("exit", {"exit_code": 0, "signal": None})


def test_stdin_by_session(server: httpx.Client, fake_meda: Meda) -> None:
    with server.stream("POST", EXEC + "/stream", json={"command": ["cat"]}) as response:
        lines = events(response.iter_lines())
        kind, data = next(lines)
        assert kind == "started"
        stdin = f"{EXEC}/{data['session']}/stdin"
        octets = {"Content-Type": "application/octet-stream"}
        sent = server.post(stdin, content=b"hello ", headers=octets)
        assert sent.status_code == 200 and sent.json()["size"] == 6
        sent = server.post(stdin, params={"eof": True}, content=b"world", headers=octets)
        assert sent.json() == {"session": data["session"], "size": 5, "eof": True}
        out = b"".join(base64.b64decode(d["data"]) for k, d in lines if k == "stdout")
    assert out == b"hello world"
    assert server.post(stdin, content=b"late", headers=octets).status_code == 404
    assert len(fake_meda.guest.sessions) == 0


def test_stdin_for_another_clients_session_is_404(client: TestClient, fake_meda: Meda) -> None:
    token = caller.set("token:someone-else")
    try:
        running = fake_meda.guest.start("vm1", ExecRequest(command=["cat"]), None)
    finally:
        caller.reset(token)
    try:
        octets = {"Content-Type": "application/octet-stream"}
        for session in (running.id, "made-up"):
            answer = client.post(f"{EXEC}/{session}/stdin", content=b"x", headers=octets)
            assert answer.status_code == 404
        untyped = client.post(f"{EXEC}/{running.id}/stdin", content=b"x")
        assert untyped.status_code == 415
    finally:
        running.close()


def test_a_client_that_goes_away_has_its_command_killed(
    server: httpx.Client, fake_meda: Meda
) -> None:
    body = {"command": ["sh", "-c", "echo $$; exec sleep 60"], "stdin": ""}
    with server.stream("POST", EXEC + "/stream", json=body) as response:
        for kind, data in events(response.iter_lines()):
            if kind == "stdout":
                pid = int(base64.b64decode(data["data"]))
                break
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}")
    while len(fake_meda.guest.sessions) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(fake_meda.guest.sessions) == 0


def test_a_timeout_ends_the_stream_with_an_error_event(server: httpx.Client) -> None:
    body = {"command": ["sleep", "30"], "stdin": "", "timeout": 0.5}
    with server.stream("POST", EXEC + "/stream", json=body) as response:
        last = list(events(response.iter_lines()))[-1]
    assert last[0] == "error" and last[1]["code"] == "TIMEOUT"


def test_sessions_are_capped(client: TestClient, fake_meda: Meda) -> None:
    fake_meda.guest.sessions.limit = 1
    running = fake_meda.guest.start("vm1", ExecRequest(command=["sleep", "30"]), None)
    try:
        answer = client.post(EXEC, json={"command": ["true"]})
        assert answer.status_code == 429 and answer.json()["code"] == "RATE_LIMITED"
    finally:
        running.close()


def test_one_audit_line_per_command_without_its_output(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="meda.audit"):
        client.post(
            EXEC, json={"command": ["sh", "-c", "echo top-secret"], "stdin": "stdin-secret"}
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "meda.audit"]
    assert any("vm=vm1" in line and "by=address:testclient" in line for line in lines)
    assert any("exit=0" in line for line in lines)
    assert not any("top-secret\n" in line or "stdin-secret" in line for line in lines)
