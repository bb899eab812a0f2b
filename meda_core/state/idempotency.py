"""Idempotent retries: the first answer to each client's ``Idempotency-Key``, kept a day.

A request with a key claims it (a row whose ``status`` is NULL while it runs, naming the
process that runs it); its answer is kept under the key for :data:`DAY`. Another request
with the key then gets that answer back, or waits while the first still runs, or, with
another method, path or body, :class:`~meda_core.errors.IdempotencyMismatch`. A claim
whose process died is taken over by the next request: nothing else would ever finish it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from meda_core.errors import IdempotencyMismatch
from meda_core.host import processes
from meda_core.inputs.idempotency import HEADER
from meda_core.models import RuntimeInfo
from meda_core.state.store import StateStore

#: Seconds an answer is kept.
DAY = 24 * 3600.0
#: Keys kept per client; beyond, its oldest answers are forgotten first.
MAX_KEYS_PER_CLIENT = 10_000
#: Keys kept for all clients together (clients are tokens and addresses: not a few).
MAX_KEYS = 50_000
#: Seconds between sweeps of every client's expired keys (a key is checked on each use).
PRUNE_EVERY = 60.0

#: Ids of the :class:`IdempotencyKeys` open in this process: whose claims are live here.
_OPEN: set[str] = set()


class Claim(Enum):
    """What a request with a key may do, when the key holds no answer to give it."""

    CLAIMED = "claimed"  # run it: the key is this request's until it finishes or releases it
    RUNNING = "running"  # the first request with the key still runs: wait for its answer


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as first sent: status, headers (but its length) and body."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps(self.headers).encode() + b"\n" + self.body

    @classmethod
    def decode(cls, status: int, blob: bytes) -> Answer:
        headers, _, body = blob.partition(b"\n")
        return cls(status, body, json.loads(headers))


def fingerprint(method: str, target: str, body: bytes) -> str:
    """What a key promises stays the same: sha256 of the method, the path (and query) and the
    body as canonical JSON (keys sorted, no spaces), so spacing and key order do not matter."""
    try:
        canonical = json.dumps(
            json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except ValueError:  # no body, or not JSON: its bytes as they are
        canonical = body
    request = b"\n".join([method.upper().encode(), target.encode(), canonical])
    return hashlib.sha256(request).hexdigest()


class IdempotencyKeys:
    """The ``idempotency`` table of a state store: claims, answers, expiry."""

    def __init__(
        self,
        store: StateStore,
        ttl: float = DAY,
        per_client: int = MAX_KEYS_PER_CLIENT,
        clock: Callable[[], float] = time.time,
        total: int = MAX_KEYS,
    ) -> None:
        self.store, self.ttl, self.per_client, self.clock = store, ttl, per_client, clock
        self.total = total
        self.id = uuid.uuid4().hex
        self._owner: tuple[int, bytes] | None = None
        self._pruned = float("-inf")
        _OPEN.add(self.id)

    def close(self) -> None:
        """Claims left by this object are dead from now on: the next request takes them."""
        _OPEN.discard(self.id)

    def claim(self, client: str, key: str, fingerprint: str) -> Answer | Claim:
        """The answer kept for ``client``'s ``key``; else the key claimed for this request
        (:attr:`Claim.CLAIMED`), or :attr:`Claim.RUNNING` while another request has it.
        :class:`IdempotencyMismatch` if the key was used for another request."""
        now = self.clock()
        with self.store.transaction() as db:
            self._prune(db, now)
            row = db.execute(
                "SELECT fingerprint, status, answer, created FROM idempotency"
                " WHERE client = ? AND key = ?",
                (client, key),
            ).fetchone()
            if row is not None and row[3] <= now - self.ttl:
                db.execute("DELETE FROM idempotency WHERE client = ? AND key = ?", (client, key))
                row = None
            if row is None:
                self._make_room(db, client)
                db.execute(
                    "INSERT INTO idempotency (client, key, fingerprint, status, answer, created)"
                    " VALUES (?, ?, ?, NULL, ?, ?)",
                    (client, key, fingerprint, self._owner_id(), now),
                )
                return Claim.CLAIMED
            if row[0] != fingerprint:
                raise IdempotencyMismatch(
                    f"{HEADER} {key!r} was used for another request (method, path or body) "
                    "in the last day: a key names one request; use a new key for a new one",
                    key=key,
                )
            if row[1] is not None:
                return Answer.decode(row[1], row[2])
            if _alive(row[2]):
                return Claim.RUNNING
            db.execute(  # its process is gone: nothing else will finish it
                "UPDATE idempotency SET answer = ?, created = ? WHERE client = ? AND key = ?",
                (self._owner_id(), now, client, key),
            )
            return Claim.CLAIMED

    def finish(self, client: str, key: str, answer: Answer) -> None:
        """Keep ``answer`` for the key this object claimed."""
        with self.store.transaction() as db:
            db.execute(
                "UPDATE idempotency SET status = ?, answer = ?"
                " WHERE client = ? AND key = ? AND status IS NULL AND answer = ?",
                (answer.status, answer.encode(), client, key, self._owner_id()),
            )

    def release(self, client: str, key: str) -> None:
        """Give up the key this object claimed, keeping nothing: the request may be retried."""
        with self.store.transaction() as db:
            db.execute(
                "DELETE FROM idempotency"
                " WHERE client = ? AND key = ? AND status IS NULL AND answer = ?",
                (client, key, self._owner_id()),
            )

    def _prune(self, db: sqlite3.Connection, now: float) -> None:
        if now - self._pruned >= PRUNE_EVERY:
            db.execute("DELETE FROM idempotency WHERE created <= ?", (now - self.ttl,))
            self._pruned = now

    def _make_room(self, db: sqlite3.Connection, client: str) -> None:
        """Room for one more key of ``client``: its oldest answers go first, then (past
        the total) the oldest answers of all."""
        (count,) = db.execute(
            "SELECT COUNT(*) FROM idempotency WHERE client = ?", (client,)
        ).fetchone()
        if count >= self.per_client:
            db.execute(
                "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency"
                " WHERE client = ? AND status IS NOT NULL ORDER BY created LIMIT ?)",
                (client, count - self.per_client + 1),
            )
        (count,) = db.execute("SELECT COUNT(*) FROM idempotency").fetchone()
        if count >= self.total:
            db.execute(
                "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency"
                " WHERE status IS NOT NULL ORDER BY created LIMIT ?)",
                (count - self.total + 1,),
            )

    def _owner_id(self) -> bytes:
        """This process (exactly: PID, start time, boot) and this object, as a claim names
        its owner."""
        pid = os.getpid()
        if self._owner is None or self._owner[0] != pid:  # a forked child is another owner
            runtime = processes.identify(pid)
            assert runtime is not None  # this very process runs
            owner = runtime.model_dump(include={"pid", "start_ticks", "boot_id"})
            self._owner = (pid, json.dumps({**owner, "keys": self.id}).encode())
        return self._owner[1]


def _alive(owner: bytes) -> bool:
    """Whether the claim's owner may still finish it: its process runs (not a PID reused)
    and, in this process, its :class:`IdempotencyKeys` is open."""
    try:
        named = json.loads(owner)
        runtime = RuntimeInfo(
            pid=named["pid"], start_ticks=named["start_ticks"], boot_id=named["boot_id"]
        )
    except (ValueError, KeyError, TypeError):
        return False
    if not processes.is_alive(runtime):
        return False
    return runtime.pid != os.getpid() or named.get("keys") in _OPEN
