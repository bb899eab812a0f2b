"""Rate limits and logs: 429 with Retry-After past a client's budget (for changes, and for
reads apart); JSON log lines with the request id, and never a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from meda_api import create_app, logs
from meda_api.ratelimit import Limit, client_of
from meda_cli.commands.serve import _uvicorn_config, rate_limits
from meda_core.errors import InvalidRequest
from meda_core.facade import Meda

TOKEN = "tok-planted-secret-4242"


def test_a_client_over_its_budget_gets_429(fake_meda: Meda, fake_image: str) -> None:
    app = create_app(fake_meda, rate_limit=Limit(rate=0.5, burst=2))
    with TestClient(app, raise_server_exceptions=False, base_url="http://localhost") as client:
        answers = [client.post("/api/v1/vms", json={"name": f"r{i}"}) for i in range(3)]
        assert [a.status_code for a in answers] == [201, 201, 429]
        refused = answers[2]
        assert refused.json()["code"] == "RATE_LIMITED"
        assert set(refused.json()) == {"error", "code", "details"}
        assert 1 <= int(refused.headers["retry-after"]) <= 2
        assert client.get("/api/v1/vms").status_code == 200  # reads are not limited
        # A made-up token does not make another client: only one the server checked would.
        other = client.delete("/api/v1/vms/r0", headers={"Authorization": "Bearer other"})
        assert other.status_code == 429


@pytest.mark.parametrize("text", ["x", "5/0", "-1/3", "a/b"])
def test_bad_rate_limits_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequest):
        Limit.parse(text)


def test_rate_limit_syntax() -> None:
    assert Limit.parse("off") is None and Limit.parse("") is None
    assert Limit.parse("5/20") == Limit(5.0, 20)


@pytest.fixture
def log_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    monkeypatch.setenv("MEDA_REGISTRY_PASSWORD", "registry-planted-secret")
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    logs.configure(level="DEBUG", json_lines=True, secrets=[TOKEN], stream=stream)
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_logs_are_json_with_the_request_id_and_without_secrets(
    log_lines: io.StringIO, fake_meda: Meda, fake_image: str
) -> None:
    user_data = "#!/bin/sh\necho userdata-planted-secret\n"
    with TestClient(
        create_app(fake_meda, token=TOKEN),
        raise_server_exceptions=False,
        base_url="http://localhost",
    ) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        made = client.post("/api/v1/vms", json={"name": "l1", "user_data": user_data}, headers=auth)
        assert made.status_code == 201
        client.get("/api/v1/vms", headers={"Authorization": f"Bearer {TOKEN}x"})  # 401
        logging.getLogger("meda_core").error("a plugin logged %s by mistake", TOKEN)
        client.delete("/api/v1/vms/l1", headers=auth)
    text = log_lines.getvalue()
    for secret in (TOKEN, "registry-planted-secret", "userdata-planted-secret"):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    access = [line for line in lines if line["logger"] == "meda_api.access"]
    created = next(line for line in access if line["method"] == "POST")
    assert created["request_id"] == made.headers["x-request-id"]
    assert created["route"] == "/api/v1/vms" and created["status"] == 201
    assert any(line["status"] == 401 for line in access)
    assert any("[redacted]" in line["message"] for line in lines)


def test_log_level_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDA_LOG_LEVEL", raising=False)
    monkeypatch.setenv("MEDA_LOG", "meda=debug")
    assert logs.level_from_environment() == "DEBUG"
    monkeypatch.setenv("MEDA_LOG_LEVEL", "warning")
    assert logs.level_from_environment() == "WARNING"


@pytest.mark.parametrize(
    ("rust_log", "level"),
    [
        ("info", "INFO"),
        ("debug", "DEBUG"),
        ("hyper=warn,meda=trace", "DEBUG"),
        ("warn,tower=debug", "WARNING"),
        ("tower=debug", "INFO"),
        ("verbose", "INFO"),
    ],
)
def test_the_seeds_rust_log_is_honoured(
    monkeypatch: pytest.MonkeyPatch, rust_log: str, level: str
) -> None:
    """``RUST_LOG=debug meda serve``, as the seed writes it, sets meda's level."""
    for variable in ("MEDA_LOG_LEVEL", "MEDA_LOG"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("RUST_LOG", rust_log)
    assert logs.level_from_environment() == level


def test_reads_have_a_bucket_of_their_own(fake_meda: Meda, fake_image: str) -> None:
    app = create_app(fake_meda, read_rate_limit=Limit(rate=0.5, burst=3))
    with TestClient(app, raise_server_exceptions=False, base_url="http://localhost") as client:
        reads = [
            client.get(path)
            for path in ("/api/v1/vms", "/api/v1/health", "/api/v1/operations", "/metrics")
        ]
        assert [r.status_code for r in reads] == [200, 200, 200, 429]
        refused = reads[3]
        assert refused.json()["code"] == "RATE_LIMITED" and "reads" in refused.json()["error"]
        assert 1 <= int(refused.headers["retry-after"]) <= 2
        assert client.post("/api/v1/vms", json={"name": "w1"}).status_code == 201  # changes
        forged = client.get("/api/v1/vms", headers={"Authorization": "Bearer other"})
        assert forged.status_code == 429  # a made-up token is no other client


def test_reads_are_limited_beyond_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDA_RATE_LIMIT", raising=False)
    monkeypatch.delenv("MEDA_READ_RATE_LIMIT", raising=False)
    assert rate_limits("127.0.0.1") == (None, None) and rate_limits("::1") == (None, None)
    changes, reads = rate_limits("0.0.0.0")
    assert changes == Limit(5, 20) and reads == Limit(20, 100)
    monkeypatch.setenv("MEDA_READ_RATE_LIMIT", "2/4")
    assert rate_limits("localhost") == (None, Limit(2, 4))
    monkeypatch.setenv("MEDA_READ_RATE_LIMIT", "off")
    assert rate_limits("10.0.0.1")[1] is None
    monkeypatch.setenv("MEDA_READ_RATE_LIMIT", "lots")
    with pytest.raises(InvalidRequest, match="MEDA_READ_RATE_LIMIT"):
        rate_limits("10.0.0.1")


@pytest.mark.parametrize(
    ("peer", "client"),
    [
        (("127.0.0.1", 5000), "address:127.0.0.1"),
        (("::1", 5002), "address:::1"),
        (("10.0.0.9", 5003), "address:10.0.0.9"),
        (None, "address:unknown"),
    ],
)
def test_a_client_without_a_token_is_its_peer_address(
    peer: tuple[str, int] | None, client: str
) -> None:
    assert client_of({"type": "http", "client": peer, "headers": []}) == client


def test_the_server_never_takes_its_clients_address_from_a_header() -> None:
    config = _uvicorn_config(FastAPI(), "127.0.0.1", 7777, None, None, 5)
    assert config.proxy_headers is False
