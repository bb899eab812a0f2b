"""Lifecycle policies at work: VMs whose ttl expired are deleted, VMs whose restart policy
asks are started again, with backoff.

A serving process runs one :class:`Lifecycles` thread. Everything it acts on is in the VM
records (a ttl's deadline, a restart policy and its count), so a server that restarts goes
on where the last one stopped: a deadline that passed meanwhile fires at once, and a VM that
ended while no server ran is found stopped by the recovery and restarted.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from meda_core.errors import MedaError
from meda_core.models import TRANSITIONAL, VM, RestartPolicy, VMState
from meda_core.state.events import EventReason, VMEvent, VMEventKind, because
from meda_core.vms.service import VMService

log = logging.getLogger(__name__)

#: Seconds the thread sleeps at most between looks at the records (other processes may
#: have set a ttl meanwhile).
LOOK_INTERVAL = 30.0
#: A VM that stayed up this long since its last restart starts its backoff anew.
STEADY_SECONDS = 600.0
#: Seconds before a VM whose ttl expired is tried again when it could not be deleted
#: (busy in an operation, a template with clones).
EXPIRED_RETRY = 5.0


def restarts_after(policy: RestartPolicy, reason: EventReason) -> bool:
    """Whether a run that ended for ``reason`` is started again under ``policy``."""
    if policy == RestartPolicy.ALWAYS:
        return reason in (EventReason.FAILURE, EventReason.GUEST)
    return policy == RestartPolicy.ON_FAILURE and reason == EventReason.FAILURE


def backoff(vm: VM, most: float) -> float:
    """Seconds before VM ``vm`` is started again: 1, 2, 4 … up to ``most`` while it keeps
    ending soon after each restart; 1 again once it ran steadily."""
    last = vm.lifecycle.last_restart
    if last is None or (datetime.now(UTC) - last).total_seconds() > STEADY_SECONDS:
        return 1.0
    return float(min(most, 2 ** min(vm.lifecycle.restarts, 16)))


class Lifecycles:
    """One thread that carries out the VMs' lifecycle policies."""

    def __init__(self, vms: VMService, backoff_max: float) -> None:
        self._vms, self._backoff_max = vms, backoff_max
        self._restarts: dict[str, float] = {}  # VM name -> monotonic time of its restart
        self._expired: dict[str, float] = {}  # VM name -> monotonic time to try its delete
        self._wake = threading.Condition()
        self._stopping = self._poked = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Act on the policies from now on (a server does, once it has recovered: the runs
        its recovery found ended are restarted then)."""
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="meda-lifecycles", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def poke(self) -> None:
        """Look at the records again now (a ttl was set)."""
        with self._wake:
            self._poked = True
            self._wake.notify_all()

    def observe(self, event: VMEvent) -> None:
        """A VM event happened: a run that ended may be restarted; a new ttl looked at."""
        if event.kind == VMEventKind.STOPPED and event.reason in (
            EventReason.FAILURE,
            EventReason.GUEST,
        ):
            vm = self._vms.find(event.vm)
            if vm is not None and restarts_after(vm.lifecycle.restart, event.reason):
                self._schedule(vm)
        elif event.kind == VMEventKind.DELETED:
            with self._wake:
                self._restarts.pop(event.vm, None)
                self._expired.pop(event.vm, None)
        elif event.kind != VMEventKind.EXPIRED:
            with self._wake:  # an operation on an expired VM ended: try its delete now
                if event.vm in self._expired:
                    self._expired[event.vm] = 0.0
        self.poke()

    def _schedule(self, vm: VM) -> None:
        with self._wake:
            self._restarts[vm.name] = time.monotonic() + backoff(vm, self._backoff_max)
        self.poke()

    def _run(self) -> None:
        while True:
            try:
                timeout = self._until_next()  # reads the store: not under the lock
            except Exception:
                log.exception("lifecycle policies: could not read the VMs; trying again soon")
                timeout = 1.0
            with self._wake:
                if not self._poked and not self._stopping:
                    self._wake.wait(timeout)
                self._poked = False
                if self._stopping:
                    return
            try:
                with because(EventReason.POLICY):
                    self._expire()
                    self._restart_due()
            except Exception:  # one bad turn is not the end of the policies
                log.exception("lifecycle policies: a turn failed; they go on")

    def _until_next(self) -> float:
        """Seconds until the next restart, ttl deadline or retry (at most LOOK_INTERVAL)."""
        now, clock = datetime.now(UTC), time.monotonic()
        with self._wake:
            waits = [due - clock for due in [*self._restarts.values(), *self._expired.values()]]
        for vm in self._vms.list():
            expires = vm.lifecycle.expires
            if expires is not None and vm.name not in self._expired:
                waits.append((expires - now).total_seconds())
        return max(0.0, min([LOOK_INTERVAL, *waits]))

    def _expire(self) -> None:
        """Delete the VMs whose ttl passed, each announced once; one busy in an operation
        (or that cannot go yet) is tried again every EXPIRED_RETRY seconds."""
        now, clock = datetime.now(UTC), time.monotonic()
        for vm in self._vms.list():
            expires = vm.lifecycle.expires
            if expires is None or expires > now:
                with self._wake:  # given a new ttl meanwhile
                    self._expired.pop(vm.name, None)
                continue
            with self._wake:
                retry = self._expired.get(vm.name)
                if retry is not None and retry > clock:
                    continue
                self._expired[vm.name] = clock + EXPIRED_RETRY
            if retry is None:  # the first look since it expired
                log.info("VM %s: its ttl expired; deleting it", vm.name)
                self._vms.announce_expiry(vm)
            if vm.state in TRANSITIONAL:
                continue  # its operation ends first
            try:
                self._vms.delete(vm.name)
            except MedaError as error:
                log.warning("VM %s: ttl expired but not deleted yet: %s", vm.name, error.message)

    def _restart_due(self) -> None:
        now = time.monotonic()
        with self._wake:
            due = [name for name, when in self._restarts.items() if when <= now]
            for name in due:
                del self._restarts[name]
        for name in due:
            vm = self._vms.find(name)
            if vm is None or vm.state != VMState.STOPPED:
                continue  # deleted, or started by someone else meanwhile
            vm = self._vms.count_restart(name)
            self._vms.announce_restart(vm)
            try:
                self._vms.start(name)
            except MedaError as error:  # tried again, later each time
                log.warning("VM %s: restart failed: %s", name, error.message)
                self._schedule(vm)
