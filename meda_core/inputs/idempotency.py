"""``Idempotency-Key`` values: what a client may name a request with, checked before use."""

from __future__ import annotations

import re

from meda_core.errors import InvalidRequest

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
#: 1-255 printable ASCII characters, not starting or ending with a space (HTTP would trim it).
KEY_PATTERN = r"^[!-~](?:[ -~]{0,253}[!-~])?$"
KEY_RULE = (
    f"use 1-{MAX_KEY_LENGTH} printable ASCII characters, not starting or ending with a space "
    "(a UUID is a good key)"
)

_KEY = re.compile(KEY_PATTERN)


def check_key(key: str) -> str:
    """``key`` if it is a valid idempotency key, else :class:`InvalidRequest`."""
    if not _KEY.fullmatch(key):
        shown = key[:64] + ("…" if len(key) > 64 else "")
        raise InvalidRequest(
            f"invalid {HEADER} {shown!r}: {KEY_RULE}", header=HEADER, pattern=KEY_PATTERN
        )
    return key
