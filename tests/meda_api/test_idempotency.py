"""``Idempotency-Key``: a retry answers as the first request did, and never creates twice."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import anyio.to_thread
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from meda_api.idempotency import REPLAYED, Retries, kept
from meda_core.errors import BackendUnavailable
from meda_core.facade import Meda
from meda_core.interface.remote import RemoteApi
from meda_core.interface.table import TABLE
from meda_core.models import CreateVMRequest
from meda_core.state.idempotency import DAY, IdempotencyKeys
from meda_core.testing.fakes import FakeStorage
from tests.conftest import ServeApi

VMS = "/api/v1/vms"
#: The operations that create something: each takes a key.
CREATING = {
    "create_vm",
    "clone_vm",
    "run_image",
    "pull_image",
    "create_image",
    "add_forward",
}


class Gate:
    """Holds every disk creation (so every create, run and clone) until it is opened."""

    def __init__(self) -> None:
        self.entered, self.opened = threading.Event(), threading.Event()
        self.calls = 0
        self._lock = threading.Lock()

    def pass_through(self) -> None:
        with self._lock:
            self.calls += 1
        self.entered.set()
        assert self.opened.wait(60), "the gate was never opened"


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    gate = Gate()
    create_disk = FakeStorage.create_disk

    def held(self: FakeStorage, *args: Any, **kwargs: Any) -> Any:
        gate.pass_through()
        return create_disk(self, *args, **kwargs)

    monkeypatch.setattr(FakeStorage, "create_disk", held)
    yield gate
    gate.opened.set()


def post(client: TestClient, path: str, body: Any, key: str | None, **headers: str) -> Any:
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(path, json=body, headers=headers)


def names(meda: Meda) -> list[str]:
    return [vm.name for vm in meda.vms.list()]


def assert_replayed(first: httpx.Response, again: httpx.Response) -> None:
    assert again.status_code == first.status_code
    assert again.content == first.content
    assert REPLAYED.lower() not in first.headers and again.headers[REPLAYED] == "true"


def test_a_retry_gets_the_first_answer_and_one_vm(client: TestClient, fake_meda: Meda) -> None:
    first = post(client, VMS, {"name": "web", "memory": "512M"}, "k-1")
    assert first.status_code == 201, first.text
    # The same body, its keys in another order and spaced otherwise: the same request.
    again = client.post(
        VMS,
        content=b'{ "memory" : "512M",  "name": "web" }',
        headers={"Idempotency-Key": "k-1", "Content-Type": "application/json"},
    )
    assert_replayed(first, again)
    assert names(fake_meda) == ["web"]
    assert post(client, VMS, {"name": "web"}, None).status_code == 409  # no key: as before


def test_an_answer_with_a_key_is_the_answer_without_one(client: TestClient) -> None:
    keyed = post(client, VMS, {"name": "keyed", "labels": {"team": "ci"}}, "k-1")
    plain = post(client, VMS, {"name": "plain", "labels": {"team": "ci"}}, None)
    assert keyed.status_code == plain.status_code == 201
    assert keyed.headers["content-type"] == plain.headers["content-type"]

    def shape(body: bytes) -> dict[str, Any]:
        """The answer without what each VM has its own of (its name, address, times)."""
        answer = json.loads(body.replace(b"keyed", b"plain"))
        vm = answer["vm"]
        vm.pop("ip")
        for own in ("mac", "created"):
            vm["details"].pop(own)
        return dict(answer)

    assert shape(keyed.content) == shape(plain.content)


def test_another_body_under_the_key_is_a_422_that_changes_nothing(
    client: TestClient, fake_meda: Meda
) -> None:
    post(client, VMS, {"name": "web"}, "k-1")
    refused = post(client, VMS, {"name": "db"}, "k-1")
    assert refused.status_code == 422
    body = refused.json()
    assert body["code"] == "IDEMPOTENCY_MISMATCH" and "Idempotency-Key" in body["error"]
    assert body["details"]["key"] == "k-1"
    assert names(fake_meda) == ["web"]
    # Another path with that body is another request too.
    vm = post(client, f"{VMS}/web/port-forward", {"host_port": 18080, "guest_port": 80}, "k-1")
    assert vm.status_code == 422
    assert fake_meda.store.forwards("web") == []


def test_each_client_has_its_own_keys(client: TestClient, fake_meda: Meda) -> None:
    first = post(client, VMS, {"name": "web"}, "shared")
    stranger = TestClient(
        client.app,
        raise_server_exceptions=False,
        base_url="http://localhost",
        client=("10.9.8.7", 4000),
    )
    # The same key and body from another client is that client's own request: it runs
    # (and finds the name taken); it never sees the first client's answer.
    theirs = post(stranger, VMS, {"name": "web"}, "shared")
    assert theirs.status_code == 409 and REPLAYED.lower() not in theirs.headers
    assert post(stranger, VMS, {"name": "other"}, "another").status_code == 201
    assert_replayed(first, post(client, VMS, {"name": "web"}, "shared"))
    assert names(fake_meda) == ["other", "web"]


def test_an_answer_is_kept_for_a_day(client: TestClient, fake_meda: Meda) -> None:
    now = [time.time()]
    keys = IdempotencyKeys(fake_meda.store, clock=lambda: now[0])
    app = cast(FastAPI, client.app)
    app.state.retries = Retries(keys, fake_meda.settings.idempotency_wait, app.state.held)
    first = post(client, VMS, {"name": "web"}, "daily")
    now[0] += DAY - 60
    assert_replayed(first, post(client, VMS, {"name": "web"}, "daily"))
    fake_meda.vms.delete("web")
    now[0] += 60
    after = post(client, VMS, {"name": "web"}, "daily")  # forgotten: a new request
    assert after.status_code == 201 and REPLAYED.lower() not in after.headers
    assert after.json()["vm"]["details"]["mac"] != first.json()["vm"]["details"]["mac"]


@pytest.mark.parametrize(
    "headers",
    [
        [("Idempotency-Key", "")],
        [("Idempotency-Key", "x" * 256)],
        [("Idempotency-Key", "caf\xe9".encode("latin-1"))],
        [("Idempotency-Key", b"a\x01b")],
        [("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    ],
    ids=["empty", "too-long", "not-ascii", "control", "twice"],
)
def test_a_bad_key_is_a_400_that_changes_nothing(
    client: TestClient, fake_meda: Meda, headers: list[tuple[str, str | bytes]]
) -> None:
    refused = client.post(VMS, json={"name": "web"}, headers=headers)
    assert refused.status_code == 400, refused.text
    assert refused.json()["code"] == "INVALID_REQUEST"
    assert "Idempotency-Key" in refused.json()["error"]
    assert names(fake_meda) == []
    with fake_meda.store.transaction() as db:
        assert db.execute("SELECT COUNT(*) FROM idempotency").fetchone() == (0,)


def test_a_4xx_is_kept_a_5xx_releases_the_key(
    client: TestClient, fake_meda: Meda, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = post(client, VMS, {"name": "web", "image": "later"}, "k-404")
    assert missing.status_code == 404
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"x")
    fake_meda.images.import_files("later", kernel=kernel)
    assert_replayed(missing, post(client, VMS, {"name": "web", "image": "later"}, "k-404"))
    assert names(fake_meda) == []

    monkeypatch.setattr(FakeStorage, "fail_create", True)
    failed = post(client, VMS, {"name": "web"}, "k-500")
    assert failed.status_code == 500 and failed.json()["code"] == "BACKEND_ERROR"
    monkeypatch.setattr(FakeStorage, "fail_create", False)
    retried = post(client, VMS, {"name": "web"}, "k-500")  # the key was released: it runs
    assert retried.status_code == 201 and REPLAYED.lower() not in retried.headers
    assert names(fake_meda) == ["web"]


def test_what_is_kept() -> None:
    assert all(kept(status) for status in (200, 201, 202, 400, 404, 409, 422))
    assert not any(kept(status) for status in (429, 500, 502, 503))


def test_a_retry_while_the_first_runs_waits_for_its_answer(
    client: TestClient, fake_meda: Meda, gate: Gate
) -> None:
    """Two threads: the first create is held in its backend; the retry must neither make a
    second VM nor be refused: it waits, then gets the first one's answer."""
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, client, VMS, {"name": "slow"}, "k-slow")
        assert gate.entered.wait(10)
        retry = pool.submit(post, client, VMS, {"name": "slow"}, "k-slow")
        time.sleep(1.0)
        assert not retry.done(), retry.result().text  # waiting, not answered
        gate.opened.set()
        answers = first.result(30), retry.result(30)
    assert answers[0].status_code == 201, answers[0].text
    assert_replayed(*answers)
    assert names(fake_meda) == ["slow"] and gate.calls == 1


def test_many_retries_at_once_make_one_vm(client: TestClient, fake_meda: Meda) -> None:
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: post(client, VMS, {"name": "one"}, "k"), range(12)))
    assert {a.status_code for a in answers} == {201}
    assert len({a.content for a in answers}) == 1
    assert sum(REPLAYED.lower() not in a.headers for a in answers) == 1  # the one that ran
    assert names(fake_meda) == ["one"]


def test_waiting_retries_hold_no_worker_thread(
    client: TestClient, fake_meda: Meda, gate: Gate
) -> None:
    """With two worker threads, the first create holding one: eight waiting retries leave
    the other free for the rest of the API."""

    def two_threads() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 2

    assert client.portal is not None
    client.portal.call(two_threads)
    with ThreadPoolExecutor(10) as pool:
        first = pool.submit(post, client, VMS, {"name": "slow"}, "k-slow")
        assert gate.entered.wait(10)
        retries = [pool.submit(post, client, VMS, {"name": "slow"}, "k-slow") for _ in range(8)]
        time.sleep(1.0)
        started = time.monotonic()
        assert client.get("/api/v1/plugins").status_code == 200  # a route run in a thread
        assert time.monotonic() - started < 5
        assert not any(retry.done() for retry in retries)
        gate.opened.set()
        answers = [first.result(30)] + [retry.result(30) for retry in retries]
    assert {a.status_code for a in answers} == {201} and names(fake_meda) == ["slow"]


@pytest.mark.parametrize("meda_settings", [{"idempotency_wait": 0.5}], indirect=True)
def test_a_retry_waits_only_so_long(client: TestClient, fake_meda: Meda, gate: Gate) -> None:
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, client, VMS, {"name": "slow"}, "k-slow")
        assert gate.entered.wait(10)
        busy = post(client, VMS, {"name": "slow"}, "k-slow")
        assert busy.status_code == 409 and busy.json()["code"] == "CONFLICT"
        assert "still running" in busy.json()["error"]
        assert int(busy.headers["retry-after"]) > 0
        gate.opened.set()
        answer = first.result(30)
    assert_replayed(answer, post(client, VMS, {"name": "slow"}, "k-slow"))
    assert names(fake_meda) == ["slow"]


def test_an_accepted_background_run_is_the_answer_kept(client: TestClient, fake_meda: Meda) -> None:
    body = {"image": "default", "name": "bg"}
    accepted = post(client, "/api/v1/images/run", body, "k-run", Prefer="respond-async")
    assert accepted.status_code == 202, accepted.text
    # A retry, preferring it or not, gets the same operation to follow.
    again = post(client, "/api/v1/images/run", body, "k-run")
    assert_replayed(accepted, again)
    assert again.headers["location"] == accepted.headers["location"]
    done = client.get(accepted.headers["location"], params={"wait": 30}).json()
    assert done["state"] == "succeeded", done
    runs = client.get("/api/v1/operations").json()["operations"]
    assert [op["kind"] for op in runs] == ["run"]
    assert names(fake_meda) == ["bg"]


def _template(client: TestClient) -> None:
    assert post(client, VMS, {"name": "tpl", "template": True}, None).status_code == 201
    assert client.post(f"{VMS}/tpl/start").status_code == 200
    assert client.post(f"{VMS}/tpl/snapshot").status_code == 200
    assert client.post(f"{VMS}/tpl/stop", params={"force": True}).status_code == 200


#: Each operation that creates something: what sets it up, its path and body.
SIX: dict[str, tuple[Callable[[TestClient], None], str, dict[str, Any]]] = {
    "create_vm": (lambda c: None, VMS, {"name": "made"}),
    "clone_vm": (_template, f"{VMS}/tpl/clone", {"name": "made"}),
    "run_image": (lambda c: None, "/api/v1/images/run", {"image": "default", "name": "made"}),
    "pull_image": (
        lambda c: c.post(
            "/api/v1/images/push", json={"name": "default", "image": "127.0.0.1:1/o/pulled:v1"}
        ),
        "/api/v1/images/pull",
        {"image": "127.0.0.1:1/o/pulled:v1"},
    ),
    "create_image": (
        lambda c: c.post(VMS, json={"name": "src"}),
        "/api/v1/images",
        {"name": "made", "from_vm": "src"},
    ),
    "add_forward": (
        lambda c: c.post(VMS, json={"name": "src"}),
        f"{VMS}/src/port-forward",
        {"host_port": 18080, "guest_port": 80},
    ),
}


@pytest.mark.parametrize("operation", sorted(SIX))
def test_every_operation_that_creates_something_replays(
    client: TestClient, fake_meda: Meda, operation: str
) -> None:
    setup, path, body = SIX[operation]
    setup(client)
    before = (names(fake_meda), fake_meda.store.list_images(), fake_meda.store.forwards())
    first = post(client, path, body, f"key-{operation}")
    assert first.status_code in (200, 201), first.text
    after = (names(fake_meda), fake_meda.store.list_images(), fake_meda.store.forwards())
    assert after != before
    assert_replayed(first, post(client, path, body, f"key-{operation}"))
    now = (names(fake_meda), fake_meda.store.list_images(), fake_meda.store.forwards())
    assert [len(part) for part in now] == [len(part) for part in after]  # nothing new


def test_the_document_gives_the_key_to_exactly_those_operations(client: TestClient) -> None:
    doc = client.get("/api/v1/openapi.json").json()
    keyed = {
        op["operationId"]
        for item in doc["paths"].values()
        for op in item.values()
        if any(p["name"] == "Idempotency-Key" for p in op.get("parameters", []))
    }
    table = {e.operation_id for e in TABLE if e.idempotent}
    assert keyed == table
    assert {e.name for e in TABLE if e.idempotent} == CREATING
    create = doc["paths"][VMS]["post"]
    key = next(p for p in create["parameters"] if p["name"] == "Idempotency-Key")
    assert key["in"] == "header" and key["schema"]["maxLength"] == 255
    assert create["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert REPLAYED in create["responses"]["201"]["headers"]


def test_a_client_that_times_out_and_retries_gets_the_first_answer(
    fake_meda: Meda, fake_image: str, serve_api: ServeApi, gate: Gate
) -> None:
    """THE case: over real HTTP, a client gives up on a create still running, sends it again
    with the same key while the first still runs, and gets its VM: exactly one."""
    url = serve_api(fake_meda)
    request = CreateVMRequest(name="slow", memory="256M")
    impatient = RemoteApi(url, timeout=0.5).idempotent("retry-me")
    with pytest.raises(BackendUnavailable, match="timed out"):
        impatient.create_vm(request)
    impatient.close()
    assert gate.entered.is_set() and names(fake_meda) == ["slow"]  # the first still runs

    patient = RemoteApi(url, timeout=60).idempotent("retry-me")
    with ThreadPoolExecutor(1) as pool:
        retry = pool.submit(patient.create_vm, request)
        time.sleep(1.0)
        assert not retry.done()  # waiting for the first, not making a second
        gate.opened.set()
        result = retry.result(30)
    assert result.vm is not None and result.vm.name == "slow" and result.vm.details.memory == "256M"
    assert names(fake_meda) == ["slow"] and gate.calls == 1
    # And once more, later: the kept answer, at once.
    raw = httpx.post(
        f"{url}{VMS}",
        json={"name": "slow", "memory": "256M"},
        headers={"Idempotency-Key": "retry-me"},
    )
    assert raw.status_code == 201 and raw.headers[REPLAYED] == "true"
    assert json.loads(raw.content)["vm"]["details"]["mac"] == result.vm.details.mac
    patient.close()
