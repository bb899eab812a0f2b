"""Waiting for a VM (``GET /vms/{name}/wait?for=``): its conditions, parsed, and the wait."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from meda_core.errors import (
    Conflict,
    InvalidRequest,
    InvalidState,
    MedaError,
    NoAgent,
    VMNotFound,
    WaitTimedOut,
)
from meda_core.inputs.choices import MAX_WAIT_CONDITIONS, MAX_WAIT_TIMEOUT
from meda_core.models import VM, VMState
from meda_core.vms import readiness

if TYPE_CHECKING:
    from meda_core.facade import Meda

#: What ``for`` may be, as messages and the schema say it.
FORMS = "running, stopped, ip, port:N (N from 1 to 65535) or agent"
#: Seconds between reads of the store while a server watches the VMs: their events wake a
#: waiter at once; this catches a change that comes without one.
RECHECK_WATCHED = 1.0
#: ... while nothing watches them (a CLI on the VM host): others change the store unheard.
RECHECK = 0.2
#: Seconds between two rounds of asking the guest (a connection, a ping of its agent).
PROBE_PAUSE = 0.5
#: The most seconds one probe waits for the guest, and the least it gets near the deadline.
PROBE_TIMEOUT = 2.0
PROBE_LEAST = 1.0
_PORT = re.compile(r"port:([0-9]{1,5})")


class Kind(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    IP = "ip"
    PORT = "port"
    AGENT = "agent"


_PLAIN = {Kind.RUNNING, Kind.STOPPED, Kind.IP, Kind.AGENT}


@dataclass(frozen=True)
class Condition:
    """One ``for`` value: ``kind``, and for ``port:N`` the guest's TCP port."""

    kind: Kind
    port: int = 0

    def __str__(self) -> str:
        return f"port:{self.port}" if self.kind is Kind.PORT else self.kind.value

    @property
    def in_guest(self) -> bool:
        """Asked of the guest (a connection, a ping), once the store says it may hold."""
        return self.kind in (Kind.PORT, Kind.AGENT)

    def unrecorded(self, vm: VM) -> str | None:
        """Why the store's record of ``vm`` says this does not hold (None: it may)."""
        wanted = VMState.STOPPED if self.kind is Kind.STOPPED else VMState.RUNNING
        if vm.state != wanted:
            return f"it is {vm.state.value}"
        if self.kind is Kind.IP and vm.ip is None:
            return "it has no address"
        return None


def parse_condition(text: str) -> Condition:
    """``running``, ``stopped``, ``ip``, ``port:N`` or ``agent``; InvalidRequest otherwise."""
    shown = text[:40]
    if text in _PLAIN:
        return Condition(Kind(text))
    match = _PORT.fullmatch(text)
    if match and 1 <= int(match[1]) <= 65535:
        return Condition(Kind.PORT, int(match[1]))
    if text.startswith("port:"):
        raise InvalidRequest(f"for={shown!r}: the port is a number from 1 to 65535", value=shown)
    raise InvalidRequest(f"cannot wait for {shown!r}: for is {FORMS}", value=shown)


def parse_conditions(values: Sequence[str]) -> tuple[Condition, ...]:
    """The conditions ``for`` names (repeats once), all of which must hold together."""
    if not values:
        raise InvalidRequest(f"say what to wait for: for is {FORMS} (repeat: all of them)")
    if len(values) > MAX_WAIT_CONDITIONS:
        raise InvalidRequest(
            f"at most {MAX_WAIT_CONDITIONS} for= values, not {len(values)}", count=len(values)
        )
    conditions = tuple(dict.fromkeys(parse_condition(value) for value in values))
    others = [str(c) for c in conditions if c.kind is not Kind.STOPPED]
    if len(others) < len(conditions) and others:
        raise InvalidRequest(
            f"stopped never holds with {', '.join(others)}: those need the VM running",
            conditions=[str(c) for c in conditions],
        )
    return conditions


def check_timeout(timeout: float) -> float:
    if not 0 <= timeout <= MAX_WAIT_TIMEOUT or math.isnan(timeout):
        raise InvalidRequest(
            f"timeout is 0 to {MAX_WAIT_TIMEOUT:g} seconds, not {timeout:g}", timeout=timeout
        )
    return timeout


async def wait_for(meda: Meda, name: str, conditions: Sequence[Condition], timeout: float) -> VM:
    """VM ``name`` once every condition holds at once, holding no thread meanwhile.

    WaitTimedOut after ``timeout`` seconds (0: look once); at once VMNotFound when the VM
    is deleted (one being deleted is waited for: its delete may fail), NoAgent for
    ``agent`` where no agent can ever answer. A stopped VM is waited for: it may be started.
    """
    check_timeout(timeout)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    woken = asyncio.Event()
    stop_listening = meda.events.on_publish(_waker(loop, woken, name))
    try:
        if any(c.kind is Kind.AGENT for c in conditions):
            await _off_loop(meda, lambda: _check_agent_backend(meda, name))
        uuid = (await _read(meda, name)).uuid
        while True:
            woken.clear()  # before the read: a change after it wakes the pause below
            vm, pending = await _pending(meda, await _read(meda, name, uuid), conditions, deadline)
            if not pending:
                return vm
            left = deadline - loop.time()
            if left <= 0:
                raise _timed_out(vm, conditions, pending, timeout)
            probing = not any(c.unrecorded(vm) for c in conditions)
            pause = PROBE_PAUSE if probing else RECHECK_WATCHED if meda.watched else RECHECK
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, pause)):
                    await woken.wait()
    finally:
        stop_listening()


Pending = list[tuple[Condition, str]]


async def _pending(
    meda: Meda, vm: VM, conditions: Sequence[Condition], deadline: float
) -> tuple[VM, Pending]:
    """The conditions that do not hold, and why; the guest is asked only once the store
    says the rest hold, and the store read again after it answered."""
    pending = _unrecorded(vm, conditions)
    probes = [c for c in conditions if c.in_guest]
    if pending or not probes:
        return vm, pending
    budget = max(deadline - asyncio.get_running_loop().time(), PROBE_LEAST)
    problems = await asyncio.gather(*(_probe(meda, vm, c, budget) for c in probes))
    pending = [(c, why) for c, why in zip(probes, problems, strict=True) if why is not None]
    if pending:
        return vm, pending
    vm = await _read(meda, vm.name, vm.uuid)  # the guest answered: is the VM still as it was?
    return vm, _unrecorded(vm, conditions)


def _unrecorded(vm: VM, conditions: Sequence[Condition]) -> Pending:
    return [(c, why) for c in conditions if (why := c.unrecorded(vm)) is not None]


async def _probe(meda: Meda, vm: VM, condition: Condition, budget: float) -> str | None:
    """Why the guest does not answer as ``condition`` asks (None: it does)."""
    timeout = min(PROBE_TIMEOUT, budget)
    try:
        # Bounded again: a process to start (in a namespace), an SSH banner to hear.
        async with asyncio.timeout(timeout + readiness.GREETING_WAIT + PROBE_TIMEOUT):
            if condition.kind is Kind.AGENT:
                return await asyncio.to_thread(_agent_problem, meda, vm.name, timeout)
            return await _port_problem(meda, vm.name, condition.port, timeout)
    except TimeoutError:
        return f"no answer in {timeout:g}s"


async def _port_problem(meda: Meda, name: str, port: int, timeout: float) -> str | None:
    """Why the guest's TCP ``port`` does not answer where ``meda ssh`` would connect: its
    address seen from meda's network namespace (user-mode networking: a forward of it)."""
    try:
        host, at = await asyncio.to_thread(meda.network.guest_endpoint, name, port)
    except Conflict as error:  # no address (yet), no forward of that port (yet), stopped
        return error.message
    want = readiness.greeting(port)  # the guest's port says what speaks, not the forward's
    return await readiness.connect_problem(meda.settings.netns, host, at, timeout, want)


def _agent_problem(meda: Meda, name: str, timeout: float) -> str | None:
    """(In a worker thread: a ping blocks.) Why the agent does not answer (None: it does)."""
    try:
        agent, channel = meda.guest.channel(name)
    except InvalidState as error:  # stopped since the store was read
        return error.message
    if agent.ping(channel, timeout):
        return None
    return f"its agent did not answer a ping in {timeout:g}s"


def _check_agent_backend(meda: Meda, name: str) -> None:
    if meda.backends.agent() is None:
        raise NoAgent(name, "no agent backend is installed on this host")


async def _off_loop(meda: Meda, read: Callable[[], Any]) -> Any:
    """``read`` on the loop while the VMs are watched (it only reads the store then), else
    in a worker thread (it reconciles with the host)."""
    return read() if meda.watched else await asyncio.to_thread(read)


async def _read(meda: Meda, name: str, uuid: str | None = None) -> VM:
    """The VM as recorded; ``uuid``: the one waited for (another by its name is not it)."""
    try:
        vm: VM = await _off_loop(meda, lambda: meda.vms.get(name))
    except VMNotFound:
        if uuid is None:
            raise
        raise _deleted(name) from None
    if uuid is not None and vm.uuid != uuid:
        raise _deleted(name)
    return vm


def _deleted(name: str) -> VMNotFound:
    error = VMNotFound(name)
    MedaError.__init__(error, f"VM '{name}' was deleted while it was waited for", name=name)
    return error


def _waker(
    loop: asyncio.AbstractEventLoop, woken: asyncio.Event, name: str
) -> Callable[[dict[str, Any]], None]:
    """What wakes the wait (from any thread) when an event tells of VM ``name``."""

    def wake(event: dict[str, Any]) -> None:
        data = event.get("data")
        if event.get("event") == "vm" and isinstance(data, dict) and data.get("vm") == name:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(woken.set)

    return wake


def _timed_out(
    vm: VM, conditions: Sequence[Condition], pending: Pending, timeout: float
) -> WaitTimedOut:
    wanted = ", ".join(str(c) for c in conditions)
    why = "; ".join(f"{c}: {reason}" for c, reason in pending)
    return WaitTimedOut(
        f"VM '{vm.name}': still waiting for {wanted} after {timeout:g}s ({why})",
        name=vm.name,
        conditions=[str(c) for c in conditions],
        pending=[str(c) for c, _ in pending],
        state=vm.state.value,
        ip=vm.ip,
        timeout=timeout,
    )
