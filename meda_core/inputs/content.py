"""Digests and sizes that untrusted content declares, checked before they touch a path."""

from __future__ import annotations

import re
from typing import Any

from meda_core.errors import BackendError

#: A content digest as meda accepts it: sha256, 64 lower-case hex digits, nothing else.
SHA256_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def is_digest(value: Any) -> bool:
    return isinstance(value, str) and SHA256_DIGEST.fullmatch(value) is not None


class Checks:
    """Checks of what content from one ``origin`` declares; ``origin`` says where it came
    from, as the start of a sentence ("the registry sent")."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def invalid(self, what: str, value: Any) -> BackendError:
        return BackendError(f"{self.origin} an invalid {what}: {str(value)[:80]!r}")

    def digest(self, value: Any, what: str = "digest") -> str:
        """``value`` if it is a ``sha256:`` digest of 64 lower-case hex digits."""
        if not is_digest(value):
            raise self.invalid(what, value)
        return str(value)

    def size(self, value: Any, limit: int, what: str = "size") -> int:
        """``value`` if it is an integer from 0 to ``limit``."""
        if type(value) is not int or not 0 <= value <= limit:
            raise self.invalid(f"{what} (0 to {limit} bytes)", value)
        return value
