"""Blocking calls over QMP, on top of QEMU's own asyncio library ``qemu.qmp``."""

from __future__ import annotations

import asyncio
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


def execute(
    socket: Path, command: str, arguments: dict[str, Any] | None = None, timeout: float = 5.0
) -> Any:
    """Run one QMP command against the monitor at ``socket`` and return its result.

    Meant for synchronous callers (threads without a running event loop).
    """
    return asyncio.run(asyncio.wait_for(_execute(socket, command, arguments), timeout))
