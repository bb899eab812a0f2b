"""The idempotency keys in the state store: claims, answers, mismatches, expiry, owners."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meda_core.errors import IdempotencyMismatch, InvalidRequest
from meda_core.host import processes
from meda_core.inputs.idempotency import MAX_KEY_LENGTH, check_key
from meda_core.state.idempotency import DAY, PRUNE_EVERY, Answer, Claim, IdempotencyKeys
from meda_core.state.idempotency import fingerprint as fingerprint_of
from meda_core.state.store import StateStore

CLIENT, OTHER = "token:abc", "address:10.0.0.9"
PRINT = fingerprint_of("POST", "/api/v1/vms", b'{"name": "a"}')
CREATED = Answer(201, b'{"name":"a"}', {"content-type": "application/json"})


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state.db")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(store: StateStore, clock: Clock) -> IdempotencyKeys:
    return IdempotencyKeys(store, clock=clock)


def rows(store: StateStore) -> list[tuple[str, str, int | None]]:
    with store.transaction() as db:
        return db.execute("SELECT client, key, status FROM idempotency ORDER BY key").fetchall()


def test_the_first_request_claims_and_the_retry_gets_its_answer(keys: IdempotencyKeys) -> None:
    assert keys.claim(CLIENT, "k", PRINT) is Claim.CLAIMED
    assert keys.claim(CLIENT, "k", PRINT) is Claim.RUNNING  # while it runs
    keys.finish(CLIENT, "k", CREATED)
    assert keys.claim(CLIENT, "k", PRINT) == CREATED
    assert keys.claim(CLIENT, "k", PRINT) == CREATED  # as often as asked


def test_the_answer_is_kept_byte_for_byte() -> None:
    answer = Answer(202, b'{"a":"\xc3\xa9\\n"}\n\x00', {"location": "/x", "a": "b\nc"})
    assert Answer.decode(202, answer.encode()) == answer


def test_another_request_under_the_key_is_refused(keys: IdempotencyKeys) -> None:
    keys.claim(CLIENT, "k", PRINT)
    other = fingerprint_of("POST", "/api/v1/vms", b'{"name": "b"}')
    with pytest.raises(IdempotencyMismatch) as refused:  # running or finished alike
        keys.claim(CLIENT, "k", other)
    assert refused.value.http_status == 422 and refused.value.code == "IDEMPOTENCY_MISMATCH"
    keys.finish(CLIENT, "k", CREATED)
    with pytest.raises(IdempotencyMismatch):
        keys.claim(CLIENT, "k", other)
    assert keys.claim(CLIENT, "k", PRINT) == CREATED  # the refusal changed nothing


def test_keys_are_each_clients_own(keys: IdempotencyKeys) -> None:
    keys.claim(CLIENT, "k", PRINT)
    keys.finish(CLIENT, "k", CREATED)
    other = fingerprint_of("POST", "/api/v1/vms", b'{"name": "b"}')
    assert keys.claim(OTHER, "k", other) is Claim.CLAIMED  # neither a mismatch nor an answer


def test_a_released_key_is_free_again(keys: IdempotencyKeys, store: StateStore) -> None:
    keys.claim(CLIENT, "k", PRINT)
    keys.release(CLIENT, "k")
    assert rows(store) == []
    assert keys.claim(CLIENT, "k", PRINT) is Claim.CLAIMED


def test_answers_expire_after_a_day(keys: IdempotencyKeys, store: StateStore, clock: Clock) -> None:
    keys.claim(CLIENT, "k", PRINT)
    keys.finish(CLIENT, "k", CREATED)
    clock.now += DAY - 1
    assert keys.claim(CLIENT, "k", PRINT) == CREATED
    clock.now += 1
    other = fingerprint_of("POST", "/api/v1/vms", b'{"name": "b"}')
    assert keys.claim(CLIENT, "k", other) is Claim.CLAIMED  # a new request now


def test_a_write_prunes_every_clients_expired_keys(
    keys: IdempotencyKeys, store: StateStore, clock: Clock
) -> None:
    for client in (CLIENT, OTHER):
        keys.claim(client, "old", PRINT)
        keys.finish(client, "old", CREATED)
    clock.now += DAY + PRUNE_EVERY
    keys.claim(CLIENT, "new", PRINT)
    assert rows(store) == [(CLIENT, "new", None)]


def test_a_client_past_its_bound_loses_its_oldest_answers(store: StateStore, clock: Clock) -> None:
    keys = IdempotencyKeys(store, per_client=3, clock=clock)
    for n in range(3):
        clock.now += 1
        keys.claim(CLIENT, f"k{n}", PRINT)
        keys.finish(CLIENT, f"k{n}", CREATED)
    keys.claim(OTHER, "k0", PRINT)
    keys.claim(CLIENT, "k3", PRINT)
    assert [(c, k) for c, k, _ in rows(store) if c == CLIENT] == [
        (CLIENT, "k1"),
        (CLIENT, "k2"),
        (CLIENT, "k3"),
    ]
    assert (OTHER, "k0", None) in rows(store)  # another client's keys are not its room


def test_only_the_claims_owner_finishes_or_releases_it(
    keys: IdempotencyKeys, store: StateStore, clock: Clock
) -> None:
    keys.claim(CLIENT, "k", PRINT)
    stranger = IdempotencyKeys(store, clock=clock)
    stranger.finish(CLIENT, "k", CREATED)
    stranger.release(CLIENT, "k")
    assert stranger.claim(CLIENT, "k", PRINT) is Claim.RUNNING  # its owner is open


def test_a_claim_whose_owner_closed_is_taken_over(
    keys: IdempotencyKeys, store: StateStore, clock: Clock
) -> None:
    keys.claim(CLIENT, "k", PRINT)
    keys.close()  # as a server stopped mid-request
    successor = IdempotencyKeys(store, clock=clock)
    assert successor.claim(CLIENT, "k", PRINT) is Claim.CLAIMED
    keys.finish(CLIENT, "k", Answer(500, b"late"))  # the old owner's answer is not taken
    successor.finish(CLIENT, "k", CREATED)
    assert successor.claim(CLIENT, "k", PRINT) == CREATED


def test_a_claim_of_a_process_that_died_is_taken_over(
    keys: IdempotencyKeys, store: StateStore
) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runtime = processes.identify(child.pid)
        assert runtime is not None
        owner = {**runtime.model_dump(include={"pid", "start_ticks", "boot_id"}), "keys": "x"}
        with store.transaction() as db:
            db.execute(
                "INSERT INTO idempotency VALUES (?, ?, ?, NULL, ?, ?)",
                (CLIENT, "k", PRINT, json.dumps(owner).encode(), keys.clock()),
            )
        assert keys.claim(CLIENT, "k", PRINT) is Claim.RUNNING  # it runs: wait for it
    finally:
        child.kill()
        child.wait()
    assert keys.claim(CLIENT, "k", PRINT) is Claim.CLAIMED  # it died: nobody else would finish


def test_the_fingerprint_is_the_method_path_and_json_body() -> None:
    assert fingerprint_of("POST", "/p", b'{"a": 1, "b": [1, 2]}') == fingerprint_of(
        "post", "/p", b'{"b":[1,2],"a":1}'
    )
    differ = [
        fingerprint_of("POST", "/p", b'{"a": 2}'),
        fingerprint_of("PUT", "/p", b'{"a": 1}'),
        fingerprint_of("POST", "/q", b'{"a": 1}'),
        fingerprint_of("POST", "/p", b""),
    ]
    assert len({fingerprint_of("POST", "/p", b'{"a": 1}'), *differ}) == 5


@pytest.mark.parametrize(
    "key", ["a", "0f9d3c2e-1b6a-4e5f-9c1d-2b3a4c5d6e7f", "x" * MAX_KEY_LENGTH, "a b", "~!{}"]
)
def test_good_keys(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize(
    "key", ["", "x" * (MAX_KEY_LENGTH + 1), " a", "a ", "é", "a\tb", "a\nb", "a\x00", "a\x7f"]
)
def test_bad_keys_are_invalid_requests(key: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_key(key)
    assert refused.value.http_status == 400 and "Idempotency-Key" in refused.value.message


def test_past_the_total_the_oldest_answers_of_any_client_go(
    store: StateStore, clock: Clock
) -> None:
    keys = IdempotencyKeys(store, clock=clock, total=3)
    for n in range(4):  # four clients (addresses, say), one key each
        clock.now += 1
        keys.claim(f"address:10.0.0.{n}", "k", PRINT)
        keys.finish(f"address:10.0.0.{n}", "k", CREATED)
    assert sorted(c for c, _, _ in rows(store)) == [f"address:10.0.0.{n}" for n in (1, 2, 3)]
