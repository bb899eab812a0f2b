"""A token bucket per client for changes (``MEDA_RATE_LIMIT``), another for reads."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from meda_api.security import VERIFIED_TOKEN, refuse
from meda_core.errors import InvalidRequest, RateLimited

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_CLIENTS = 10_000  # buckets kept; the idlest go first beyond this


@dataclass(frozen=True)
class Limit:
    """``rate`` requests per second on average, ``burst`` at once."""

    rate: float
    burst: int

    @classmethod
    def parse(cls, text: str, variable: str = "MEDA_RATE_LIMIT") -> Limit | None:
        """``"5/20"`` (5 per second, bursts of 20); ``"off"`` or empty: no limit."""
        if text.strip().lower() in ("", "off", "0"):
            return None
        try:
            rate, _, burst = text.partition("/")
            limit = cls(float(rate), int(burst or max(1, math.ceil(float(rate)))))
        except ValueError:
            raise InvalidRequest(f"{variable} '{text}': use RATE/BURST, e.g. 5/20") from None
        if limit.rate <= 0 or limit.burst < 1:
            raise InvalidRequest(f"{variable} '{text}' must be positive")
        return limit


class _Buckets:
    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float]] = {}  # client -> (tokens, last time)

    def take(self, client: str) -> float:
        """0 if the client may go on, else the seconds until it may."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._state.get(client, (float(self.limit.burst), now))
            tokens = min(self.limit.burst, tokens + (now - last) * self.limit.rate)
            if tokens >= 1:
                self._state[client] = (tokens - 1, now)
                self._forget_idle()
                return 0.0
            self._state[client] = (tokens, now)
            return (1 - tokens) / self.limit.rate

    def _forget_idle(self) -> None:
        if len(self._state) > MAX_CLIENTS:
            for client, _ in sorted(self._state.items(), key=lambda kv: kv[1][1])[:1000]:
                del self._state[client]


class RateLimit:
    """429 with ``Retry-After`` once a client (its token, else its address) is over.

    Changes (POST, PUT, PATCH, DELETE) and reads have a bucket each; None: no limit.
    """

    def __init__(self, app: ASGIApp, limit: Limit | None, read_limit: Limit | None = None) -> None:
        self.app = app
        self.changes = _Buckets(limit) if limit else None
        self.reads = _Buckets(read_limit) if read_limit else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            changes = scope["method"] in MUTATING
            buckets = self.changes if changes else self.reads
            wait = buckets.take(client_of(scope)) if buckets else 0.0
            if buckets and wait > 0:
                retry = max(1, math.ceil(wait))
                error = RateLimited(
                    f"too many {'changes' if changes else 'reads'}: at most "
                    f"{buckets.limit.rate:g}/s (bursts of {buckets.limit.burst}); "
                    f"retry in {retry}s",
                    retry_after=retry,
                )
                await refuse(send, error, **{"Retry-After": str(retry)})
                return
        await self.app(scope, receive, send)


def client_of(scope: Scope) -> str:
    """Who sent a request: the token it was let in with (as a digest), else its address.

    Only a token the server checked names a client: made-up ``Authorization`` headers
    would otherwise make one caller as many clients as it likes.
    """
    verified = scope.get("state", {}).get(VERIFIED_TOKEN)
    if verified:  # never kept as is: a digest of it
        return "token:" + hashlib.sha256(verified).hexdigest()[:16]
    client = scope.get("client")
    return f"address:{client[0] if client else 'unknown'}"
