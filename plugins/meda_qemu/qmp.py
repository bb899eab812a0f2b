"""Blocking calls over QMP, on top of QEMU's own asyncio library ``qemu.qmp``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient


async def _execute(socket: Path, command: str, arguments: dict[str, Any] | None) -> Any:
    client = QMPClient("meda")
    await client.connect(str(socket))
    try:
        return await client.execute(command, arguments)
    finally:
        await client.disconnect()


async def _execute_with_fd(
    socket: Path, fd: int, fdname: str, command: str, arguments: dict[str, Any] | None
) -> Any:
    client = QMPClient("meda")
    await client.connect(str(socket))
    try:
        client.send_fd_scm(fd)
        await client.execute("getfd", {"fdname": fdname})
        return await client.execute(command, arguments)
    finally:
        await client.disconnect()


def execute_with_fd(
    socket: Path,
    fd: int,
    fdname: str,
    command: str,
    arguments: dict[str, Any] | None = None,
    timeout: float = 5.0,
) -> Any:
    """Hand QEMU the open file ``fd`` as ``fdname`` (QMP ``getfd``), then run ``command``,
    which names it, on the same connection. The caller still closes its own ``fd``."""
    coroutine = _execute_with_fd(socket, fd, fdname, command, arguments)
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


Call = tuple[str, dict[str, Any]]


async def _execute_on_fdset(socket: Path, fd: int, call: Callable[[str], Call]) -> Any:
    client = QMPClient("meda")
    await client.connect(str(socket))
    try:
        client.send_fd_scm(fd)
        added: dict[str, Any] = await client.execute("add-fd")  # type: ignore[assignment]
        fdset = added["fdset-id"]
        try:
            return await client.execute(*call(f"/dev/fdset/{fdset}"))
        finally:  # what QEMU opened from the set is its own copy: the set can go
            await client.execute("remove-fd", {"fdset-id": fdset})
    finally:
        await client.disconnect()


def execute_on_fdset(
    socket: Path, fd: int, call: Callable[[str], Call], timeout: float = 5.0
) -> Any:
    """Put the open file ``fd`` in a new QEMU fd set and run the command ``call`` makes of
    the set's path (``/dev/fdset/N``), which QEMU opens as it would the file; then drop
    the set (what QEMU opened from it is its own copy)."""
    return asyncio.run(asyncio.wait_for(_execute_on_fdset(socket, fd, call), timeout))


def execute(
    socket: Path, command: str, arguments: dict[str, Any] | None = None, timeout: float = 5.0
) -> Any:
    """Run one QMP command against the monitor at ``socket`` and return its result.

    Meant for synchronous callers (threads without a running event loop).
    """
    return asyncio.run(asyncio.wait_for(_execute(socket, command, arguments), timeout))
