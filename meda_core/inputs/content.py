"""Digests and sizes that untrusted content declares, checked before they touch a path."""

from __future__ import annotations

import re
from typing import Any

from meda_core.errors import BackendError

#: A content digest as meda accepts it: sha256, 64 lower-case hex digits, nothing else.
SHA256_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def is_digest(value: Any) -> bool:
    return isinstance(value, str) and SHA256_DIGEST.fullmatch(value) is not None


def invalid(what: str, value: Any, origin: str) -> BackendError:
    """The error for an invalid ``what``; ``origin`` says where it came from, as the start
    of a sentence ("the registry sent")."""
    return BackendError(f"{origin} an invalid {what}: {str(value)[:80]!r}")


def checked_digest(value: Any, what: str, origin: str) -> str:
    """``value`` if it is a ``sha256:`` digest of 64 lower-case hex digits."""
    if not is_digest(value):
        raise invalid(what, value, origin)
    return str(value)


def checked_size(value: Any, limit: int, what: str, origin: str) -> int:
    """``value`` if it is an integer from 0 to ``limit``."""
    if type(value) is not int or not 0 <= value <= limit:
        raise invalid(f"{what} (0 to {limit} bytes)", value, origin)
    return value


class Checks:
    """The three checks above for content from one ``origin``, as plugins call them."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def invalid(self, what: str, value: Any) -> BackendError:
        return invalid(what, value, self.origin)

    def digest(self, value: Any, what: str = "digest") -> str:
        return checked_digest(value, what, self.origin)

    def size(self, value: Any, limit: int, what: str = "size") -> int:
        return checked_size(value, limit, what, self.origin)
