"""The watcher: brings what changes under meda into the store by events, so reads need not ask.

A serving process runs one. It holds a pidfd for each running VM's hypervisor process (as
the hypervisor names it) and for each transitional VM's operation owner in another
process; when one exits it reconciles that VM, the same way a read used to. Every
``interval`` seconds it also reconciles every VM: the safety net for what has no process to
watch (a hypervisor that names none, a VM started by another process meanwhile), and
runs its ``housekeeping`` (rotating the console logs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
import time
from collections.abc import Callable

from meda_core.backends.roles import HypervisorBackend, Role
from meda_core.errors import BackendUnavailable
from meda_core.host import processes as procs
from meda_core.models import TRANSITIONAL, VM, RuntimeInfo, VMState
from meda_core.state.store import StateStore
from meda_core.vms.service import VMService

log = logging.getLogger(__name__)


class Watcher:
    """One thread that keeps the VM records in line with their processes."""

    def __init__(
        self,
        vms: VMService,
        store: StateStore,
        interval: float,
        housekeeping: Callable[[], None] | None = None,
    ) -> None:
        self._vms, self._store, self._interval = vms, store, interval
        self._housekeeping = housekeeping
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._watching: dict[str, tuple[RuntimeInfo, int]] = {}  # VM name -> (process, pidfd)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meda-watcher", daemon=True)

    def start(self) -> None:
        """Watch from now on; reads answer from the store alone while this runs."""
        self._sync()
        self._thread.start()
        self._vms.watched = True

    def stop(self) -> None:
        """Stop watching and close every pidfd; reads reconcile again."""
        self._vms.watched = False
        self._stopping.set()
        self.poke()
        if self._thread.is_alive():
            self._thread.join()
        for _, pidfd in self._watching.values():
            os.close(pidfd)
        self._watching.clear()
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def poke(self) -> None:
        """Something changed (a VM started, stopped, was deleted): look at the store again."""
        with contextlib.suppress(BlockingIOError, OSError):  # a full pipe wakes it all the same
            os.write(self._wake_write, b".")

    def watched(self) -> dict[str, int]:
        """The VMs watched now, each with the PID of its process."""
        return {name: process.pid for name, (process, _) in self._watching.items()}

    def _run(self) -> None:
        """Wait for exits, pokes and sweeps until stopped. Should this thread ever end
        otherwise, reads go back to reconciling rather than trusting a store nobody keeps."""
        next_sweep = time.monotonic() + self._interval
        try:
            while not self._stopping.is_set():
                try:
                    next_sweep = self._turn(next_sweep)
                except Exception:  # one bad turn (say, no file descriptors left) is not the end
                    log.exception("the watcher's turn failed; it goes on")
                    time.sleep(min(1.0, self._interval))
        finally:
            self._vms.watched = False

    def _turn(self, next_sweep: float) -> float:
        ready = self._selector.select(max(0.0, next_sweep - time.monotonic()))
        for key, _ in ready:
            if key.data is None:
                self._drain()
            else:
                self._settle(key.data)
        if time.monotonic() >= next_sweep:
            self._sweep()
            next_sweep = time.monotonic() + self._interval
        if not self._stopping.is_set():
            self._sync()
        return next_sweep

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 4096):
                pass

    def _settle(self, name: str) -> None:
        """The process watched for ``name`` exited: reconcile that VM."""
        self._forget(name)
        try:
            self._vms.reconcile(name)
        except Exception:  # the next sweep tries again
            log.exception("could not settle VM %s after its process exited", name)

    def _sweep(self) -> None:
        try:
            self._vms.reconcile_all()
        except Exception:
            log.exception("could not reconcile the VMs")
        if self._housekeeping is not None:
            try:
                self._housekeeping()
            except Exception:
                log.exception("the watcher's housekeeping failed")

    def _sync(self) -> None:
        """Watch exactly the processes the store's VMs name now."""
        try:
            wanted = {vm.name: p for vm in self._store.list_vms() if (p := self._process(vm))}
        except Exception:
            log.exception("could not read the VMs to watch")
            return
        for name, (process, _) in list(self._watching.items()):
            if wanted.get(name) != process:
                self._forget(name)
        for name, process in wanted.items():
            if name not in self._watching:
                self._watch(name, process)

    def _process(self, vm: VM) -> RuntimeInfo | None:
        """The process whose exit means ``vm`` must be reconciled, if there is one."""
        if vm.state == VMState.RUNNING and vm.runtime is not None:
            try:
                hypervisor = self._vms.backends.by_name(
                    Role.HYPERVISOR, vm.hypervisor, HypervisorBackend
                )
            except BackendUnavailable:
                return None
            return hypervisor.watched_process(vm.runtime)
        owner = vm.operation_owner
        if vm.state in TRANSITIONAL and owner is not None and owner != self._vms.me:
            return owner
        return None

    def _watch(self, name: str, process: RuntimeInfo) -> None:
        try:
            pidfd = os.pidfd_open(process.pid)
        except ProcessLookupError:
            self._settle(name)
            return
        except OSError:  # no descriptor to spare: the sweep looks after this VM
            log.warning("cannot watch the process of VM %s; the sweep will", name, exc_info=True)
            return
        try:
            self._selector.register(pidfd, selectors.EVENT_READ, name)
        except BaseException:
            os.close(pidfd)
            raise
        self._watching[name] = (process, pidfd)
        if not procs.is_alive(process):  # gone, or its PID reused, before the pidfd
            self._settle(name)

    def _forget(self, name: str) -> None:
        watched = self._watching.pop(name, None)
        if watched is not None:
            self._selector.unregister(watched[1])
            os.close(watched[1])
