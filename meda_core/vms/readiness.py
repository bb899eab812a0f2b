"""Is a guest ready? Its service port answers on its address, seen from meda's namespace,
or its agent answers a ping."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from asyncio.subprocess import DEVNULL, PIPE
from collections.abc import Callable

from meda_core.errors import BackendError
from meda_core.host import namespaces as netns

#: Seconds a server that must speak first (SSH) gets to say its first bytes.
GREETING_WAIT = 5.0


def greeting(port: int) -> str:
    """What the server on ``port`` must say first to count: an SSH server's banner, else
    nothing (it counts once it accepts the connection)."""
    return "SSH-" if port == 22 else ""


def answers(ns: str | None, ip: str, port: int) -> bool:
    return netns.connect_problem(ns, ip, port, 2, greeting(port)) is None


async def connect_problem(
    ns: str | None, ip: str, port: int, timeout: float, want: str = ""
) -> str | None:
    """Why ``ip:port`` from ``ns`` does not answer (with ``want`` first, if given), or None;
    for an event loop, holding no thread (in a namespace the probe is a child process)."""
    if ns is not None:
        return await _probe_in(ns, ip, port, timeout, want)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(ip, port)
    except TimeoutError:
        return "timed out"
    except OSError as error:  # asyncio's strerror names the address: the errno's says why
        return os.strerror(error.errno) if error.errno else str(error)
    try:
        if want:
            async with asyncio.timeout(GREETING_WAIT):
                heard = await reader.readexactly(len(want))
            if heard != want.encode():
                return f"it answered, but not with {want}"
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return f"it did not say {want}"
    finally:
        writer.close()
    return None


async def _probe_in(ns: str, ip: str, port: int, timeout: float, want: str) -> str | None:
    argv = netns.connect_argv(ns, ip, port, timeout, want)
    probe = await asyncio.create_subprocess_exec(*argv, stdin=DEVNULL, stdout=PIPE, stderr=DEVNULL)
    try:
        said, _ = await probe.communicate()
    finally:
        if probe.returncode is None:  # called off: the probe goes with the wait
            probe.kill()
            await probe.wait()
    if probe.returncode == 0:
        return None
    return said.decode(errors="replace").strip() or "cannot connect"


class Interrupted(Exception):
    """The wait was called off (meda is shutting down): no verdict on the guest."""


def wait_until_ready(
    ns: str | None, ip: str, port: int, timeout: float, stop: threading.Event | None = None
) -> float:
    """Seconds until ``ip:port`` answers (SSH: its banner); BackendError after ``timeout``,
    Interrupted as soon as ``stop`` is set."""
    started = time.monotonic()
    stop = stop or threading.Event()
    while not stop.is_set():
        if answers(ns, ip, port):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise BackendError(f"the guest at {ip} did not answer on port {port} in {timeout:.0f}s")
        stop.wait(0.2)
    raise Interrupted(f"stopped waiting for {ip}:{port}")


#: Seconds one ping of a booting guest's agent waits before the next (on a new connection).
AGENT_PING = 2.0


def wait_until_agent(
    answers: Callable[[float], bool],
    name: str,
    timeout: float,
    stop: threading.Event | None = None,
) -> float:
    """Seconds until ``answers(wait)`` (a ping of VM ``name``'s agent) is True; BackendError
    after ``timeout``, Interrupted as soon as ``stop`` is set."""
    started = time.monotonic()
    stop = stop or threading.Event()
    while not stop.is_set():
        left = timeout - (time.monotonic() - started)
        if left <= 0:
            raise BackendError(f"the agent of VM {name} did not answer in {timeout:.0f}s")
        if answers(min(AGENT_PING, left)):
            return time.monotonic() - started
        stop.wait(0.2)
    raise Interrupted(f"stopped waiting for the agent of VM {name}")
