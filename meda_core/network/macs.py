"""Guest MAC addresses."""

from __future__ import annotations

import secrets


def random_mac() -> str:
    """A random MAC in QEMU's locally administered 52:54:00 range."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
