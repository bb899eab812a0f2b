"""Is a guest ready? Its service port answers on its address, seen from meda's namespace,
or its agent answers a ping."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from meda_core.errors import BackendError
from meda_core.host import namespaces as netns


def answers(ns: str | None, ip: str, port: int) -> bool:
    # An SSH server speaks first; anything else counts once it accepts the connection.
    return netns.connect_problem(ns, ip, port, 2, "SSH-" if port == 22 else "") is None


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
