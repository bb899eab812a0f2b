"""The VM service: create, start, stop and delete VMs through the backends, with rollback."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from meda_core.backends.roles import (
    Capability,
    HypervisorBackend,
    LaunchSpec,
    NetworkAttachment,
    NetworkBackend,
    NicSpec,
    Role,
    StorageBackend,
)
from meda_core.backends.selection import BackendSelector
from meda_core.errors import (
    BackendError,
    BackendUnavailable,
    Conflict,
    InvalidRequest,
    MedaError,
    VMNotFound,
)
from meda_core.host import processes as procs
from meda_core.images import diskprobe
from meda_core.images.service import ImageService
from meda_core.inputs.choices import MAX_STOP_TIMEOUT
from meda_core.inputs.names import check_vm_name
from meda_core.inputs.sizes import format_size
from meda_core.models import (
    MAX_TTL,
    STARTABLE,
    TRANSITIONAL,
    VM,
    CreateVMRequest,
    Lifecycle,
    Policies,
    RuntimeInfo,
    Snapshot,
    VMSpec,
    VMState,
)
from meda_core.settings import Settings
from meda_core.state.events import EventReason, VMEvent, VMEventKind, because
from meda_core.state.store import StateStore
from meda_core.vms import capacity, seed, userdata
from meda_core.vms.sshkeys import managed_key

log = logging.getLogger(__name__)
Emit = Callable[[VMEvent], None]
T = TypeVar("T")


def attachment_of(vm: VM) -> NetworkAttachment:
    """The network attachment recorded in a VM."""
    return NetworkAttachment(
        mac=vm.mac or "",
        ip=vm.ip,
        tap=vm.tap_device,
        subnet=vm.subnet,
        gateway=vm.gateway,
        netns=vm.netns,
    )


def _record_attachment(vm: VM, attachment: NetworkAttachment) -> None:
    vm.mac, vm.ip, vm.tap_device = attachment.mac, attachment.ip, attachment.tap
    vm.subnet, vm.gateway, vm.netns = attachment.subnet, attachment.gateway, attachment.netns


class _Failures(list[str]):
    """Steps of a clean-up that failed; the others still run."""

    def attempt(self, what: str, step: Callable[..., T], *args: Any) -> T | None:
        try:
            return step(*args)
        except Exception as exc:
            log.warning("could not %s: %s", what, exc)
            self.append(f"{what}: {exc}")
            return None

    def __str__(self) -> str:
        return "; ".join(self)


def _as_meda_error(exc: Exception, what: str) -> MedaError:
    if isinstance(exc, MedaError):
        return exc
    return BackendError(f"{what}: {exc}", cause=type(exc).__name__)


def power_off_timeout(force: bool, timeout: float | None, default: float) -> float:
    """Seconds of ACPI a stop or delete gives the guest: ``force`` is 0 (killed at once),
    ``timeout`` that many, neither the operation's ``default``."""
    if timeout is not None and not 0 <= timeout <= MAX_STOP_TIMEOUT:
        raise InvalidRequest(
            f"timeout must be 0 to {MAX_STOP_TIMEOUT:.0f} seconds", timeout=timeout
        )
    if force and timeout:
        raise InvalidRequest(
            "force kills the guest at once: give force or a timeout, not both",
            force=force,
            timeout=timeout,
        )
    if force:
        return 0.0
    return default if timeout is None else timeout


class VMService:
    """Every VM operation; the only code that changes a VM's state."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        images: ImageService,
        backends: BackendSelector,
        emit: Emit,
    ) -> None:
        self._settings = settings
        self._store = store
        self._images = images
        self._backends = backends
        self._emit = emit
        self._me = procs.identify(os.getpid())
        #: True while a :class:`~meda_core.vms.watch.Watcher` keeps the records in line
        #: with the host: reads then answer from the store alone.
        self.watched = False

    @property
    def backends(self) -> BackendSelector:
        return self._backends

    @property
    def me(self) -> RuntimeInfo | None:
        """This process, as it marks the operations it runs."""
        return self._me

    def finish(self, vm: VM, state: VMState) -> VM:
        """End an operation another service ran on ``vm``: save it in ``state``."""
        return self._finish(vm, state, runtime=vm.runtime)

    def begin_snapshot(self, name: str) -> VM:
        """Mark a running VM as being snapshotted by this process (it stays running)."""
        self._current(name)
        return self._begin(name, {VMState.RUNNING}, VMState.SNAPSHOTTING)

    def end_snapshot(self, vm: VM, snapshot: Snapshot | None) -> VM:
        """End :meth:`begin_snapshot`: ``vm`` runs again with ``snapshot`` as its own, or,
        with None (it failed), with the snapshot it had."""
        if snapshot is not None:
            vm.snapshot = snapshot
        return self._finish(vm, VMState.RUNNING, runtime=vm.runtime)

    def record_image_fingerprint(self, name: str, fingerprint: str) -> VM:
        """Remember which version of its image a template was built from."""
        vm = self._store.require_vm(name)
        vm.image_fingerprint = fingerprint
        self._store.save_vm(vm)
        return vm

    # ---- queries ----

    def list_view(self, view: Callable[[list[VM]], T]) -> T:
        """``view`` (a response shape) of :meth:`list`; while watched, made once per change
        to the store and shared until the next (``view`` must not change the VMs)."""
        if self.watched:
            return self._store.view_of_vms(view)
        return view(self.list())

    def reconcile(self, name: str) -> VM | None:
        """Bring one VM's record in line with the host now (None: it is gone)."""
        vm = self._store.get_vm(name)
        return None if vm is None else self._reconcile(vm)

    def reconcile_all(self) -> list[VM]:
        """Bring every VM's record in line with the host now; the VMs that remain."""
        settled = (self._reconcile(vm) for vm in self._store.list_vms())
        return [vm for vm in settled if vm is not None]

    def get(self, name: str) -> VM:
        """The VM as recorded; unless a watcher keeps the records current, reconciled first."""
        if self.watched:
            return self._store.require_vm_with_forwards(check_vm_name(name))
        return self._current(name)

    def list(self) -> list[VM]:
        """Every VM (one query while watched), by name."""
        if self.watched:
            return self._store.list_vms_with_forwards()
        return self._store.add_forwards(self.reconcile_all())

    def find(self, name: str) -> VM | None:
        """VM ``name`` as recorded, or None (not reconciled: for the server's own threads)."""
        return self._store.get_vm(name)

    def _current(self, name: str) -> VM:
        """The VM reconciled now, as an operation needs it whether watched or not."""
        vm = self._reconcile(self._store.require_vm(check_vm_name(name)))
        if vm is None:  # a create or delete cut short by a crash, settled just now
            vm = self._store.require_vm(name)
        return self._with_forwards(vm)

    def _with_forwards(self, vm: VM) -> VM:
        vm.port_forwards = [forward for _, forward in self._store.forwards(vm.name)]
        return vm

    # ---- operations ----

    def create(self, request: CreateVMRequest) -> VM:
        """Create a VM from an image."""
        name = check_vm_name(request.name)
        user_data = None
        if request.user_data is not None:
            user_data = userdata.resolve(request.user_data, self._settings.user_data_dir_list())
        image = self._images.resolve(request.image)
        spec = request.spec()
        capacity.check_possible(self._settings, spec)  # before anything, --force included
        hypervisor = self._backends.hypervisor()
        storage = self._backends.storage()
        network = self._backends.network()
        if request.force and self._store.get_vm(name) is not None:
            self.delete(name)
        vm = self._new_record(name, spec, image.ref, hypervisor.name, storage, network)
        vm.user_data, vm.template = user_data, request.template
        vm.labels, vm.lifecycle = request.labels, request.lifecycle(vm.created)

        def make_disk() -> None:
            self._create_disk(vm, storage, self._images.checked_base(image))

        return self._build(vm, make_disk, network, isolated=vm.template)

    def clone(self, name: str, template: VM, policies: Policies | None = None) -> VM:
        """Create ``name``, a stopped clone of ``template``: its disk an overlay on the
        template's snapshot, its spec, image and user data the template's, its network
        its own; its labels and lifecycle ``policies``' (none by default)."""
        name = check_vm_name(name)
        snapshot = template.snapshot
        if snapshot is None:
            raise Conflict(f"template '{template.name}' has no snapshot yet", name=template.name)
        image = self._images.resolve(template.image)
        capacity.check_possible(self._settings, template.spec)
        self._backends.hypervisor()  # the configured one must work, as for a create
        # The overlay rests on the template's frozen disk: its own storage makes it.
        storage = self._backends.by_name(Role.STORAGE, template.storage, StorageBackend)
        network = self._backends.network()
        vm = self._new_record(name, template.spec, image.ref, template.hypervisor, storage, network)
        vm.user_data, vm.clone_of = template.user_data, template.name
        if policies is not None:
            vm.labels, vm.lifecycle = policies.labels, policies.lifecycle(vm.created)

        def make_disk() -> None:
            storage.create_overlay(vm.disk_path, vm.spec.disk_bytes, snapshot.disk)

        return self._build(vm, make_disk, network, isolated=True)

    def _new_record(
        self,
        name: str,
        spec: VMSpec,
        image: str,
        hypervisor: str,
        storage: StorageBackend,
        network: NetworkBackend | None,
    ) -> VM:
        """The record of a VM about to be made, owned by this process until it is; its
        disk named and in the format ``storage`` makes."""
        disk_file = storage.disk_name()
        if not disk_file.startswith("disk."):  # never seed.iso, console.log, …
            raise BackendError(
                f"storage backend '{storage.name}' names its disks {disk_file!r}, "
                "which does not start with 'disk.'",
                backend=storage.name,
            )
        return VM(
            name=name,
            state=VMState.CREATING,
            spec=spec,
            image=image,
            vm_dir=self._settings.vms_dir / name,
            hypervisor=hypervisor,
            storage=storage.name,
            disk_file=disk_file,
            disk_format=storage.disk_format,
            created=datetime.now(UTC),
            uuid=str(uuid.uuid4()),
            operation_owner=self._me,
            network=network.name if network else None,
        )

    def _build(
        self,
        vm: VM,
        make_disk: Callable[[], None],
        network: NetworkBackend | None,
        isolated: bool,
    ) -> VM:
        """Insert ``vm``'s record, then make its directory, disk and network place; undo
        all of it if a step fails. The VM ends stopped."""
        self._store.insert_vm(vm, admit=lambda: capacity.admit_create(self._settings))
        try:
            # A directory without a record is debris of a crash: it is ours to clear.
            shutil.rmtree(vm.vm_dir, ignore_errors=True)
            vm.vm_dir.mkdir(parents=True, mode=0o700)
            make_disk()
            if network is not None:
                _record_attachment(vm, network.allocate(vm.name, isolated=isolated))
                self._store.save_vm(vm)
        except BaseException as exc:
            with contextlib.suppress(MedaError):  # if it fails, the VM stays in error saying why
                self._discard(vm)
            if isinstance(exc, Exception):
                raise _as_meda_error(exc, f"creating VM '{vm.name}' failed") from exc
            raise
        vm = self._store.transition(vm.name, {VMState.CREATING}, VMState.STOPPED)
        self._announce(VMEventKind.CREATED, vm)
        return vm

    def start(self, name: str, restore: Snapshot | None = None, reset_disk: bool = False) -> VM:
        """Boot the VM, or with ``restore`` resume it from that snapshot's saved state
        (``reset_disk``: its disk first goes back to the snapshot's)."""
        self._current(name)  # a VM whose guest powered off just now is startable
        vm = self._store.transition(
            name,
            STARTABLE,
            VMState.STARTING,
            owner=self._me,
            admit=lambda vms, vm: capacity.admit_start(self._settings, vms, vm),
        )
        try:
            runtime = self._launch(vm, restore, reset_disk)
        except Exception as exc:
            raise self._start_failed(vm, exc) from exc
        vm = self._finish(vm, VMState.RUNNING, runtime=runtime)
        self._announce(VMEventKind.STARTED, vm)
        return vm

    def _launch(self, vm: VM, restore: Snapshot | None, reset_disk: bool) -> RuntimeInfo:
        """Disk, NIC and seed ready, then the hypervisor's start (the body of :meth:`start`)."""
        hypervisor = self._hypervisor(vm)
        if restore is not None and reset_disk:
            storage = self._backends.by_name(Role.STORAGE, vm.storage, StorageBackend)
            storage.delete_disk(vm.disk_path)
            storage.create_overlay(vm.disk_path, vm.spec.disk_bytes, restore.disk)
        # The whole chain, every start: a disk made by an older meda may rest on an
        # image that names a host file.
        diskprobe.check_chain(vm.disk_path, diskprobe.roots(self._settings), vm.disk_format)
        network = self._network(vm)
        # The seed needs the attachment, not the plugged NIC: it is written meanwhile.
        with ThreadPoolExecutor(1, thread_name_prefix=f"seed-{vm.name}") as pool:
            seed_written = pool.submit(self._write_seed, vm, network)
            nics = () if network is None else (self._plug(vm, network),)
            seed_iso = seed_written.result()
        state = restore.state_file if restore is not None else None
        return hypervisor.start(self._launch_spec(vm, nics, seed_iso, state))

    def _start_failed(self, vm: VM, exc: Exception) -> MedaError:
        """Undo a start that failed with ``exc``: the VM ends stopped, or in error if the
        undoing failed too; returns the error to raise."""
        error = _as_meda_error(exc, f"starting VM '{vm.name}' failed")
        undo = _Failures()
        undo.attempt(
            "clean up after the hypervisor", lambda: self._hypervisor(vm).cleanup(vm.vm_dir)
        )
        undo.attempt("unplug its NIC", self._unplug, vm)
        if undo:
            message = f"{error.message}; then could not {undo}"
            self._finish(vm, VMState.ERROR, last_error=message)
        else:
            self._finish(vm, VMState.STOPPED, last_error=error.message)
        with because(EventReason.FAILURE):
            self._announce(VMEventKind.FAILED, vm, message=error.message)
        return error

    def stop(self, name: str, timeout: float | None = None) -> VM:
        """Power the VM off: ACPI, then forced after ``timeout`` seconds (None:
        MEDA_STOP_TIMEOUT; 0: forced at once, no ACPI)."""
        self._current(name)
        vm = self._begin(name, {VMState.RUNNING}, VMState.STOPPING)
        self._power_off(vm, self._settings.stop_timeout if timeout is None else timeout)
        vm = self._finish(vm, VMState.STOPPED)
        self._announce(VMEventKind.STOPPED, vm)
        return vm

    def delete(self, name: str, timeout: float = 0) -> None:
        """Remove the VM and its disk. A running one is powered off first, at once by
        default: its disk is thrown away, so a clean shutdown would protect nothing;
        ``timeout`` gives the guest that many seconds of ACPI first."""
        vm = self._current(name)
        clones = sorted(c.name for c in self._store.list_vms() if c.clone_of == name)
        if clones:  # their disks are overlays on this VM's snapshot
            raise Conflict(
                f"VM '{name}' is the template of {', '.join(clones)}: delete those first",
                name=name,
                clones=clones,
            )
        if vm.state == VMState.RUNNING:
            vm = self._begin(name, {VMState.RUNNING}, VMState.STOPPING)
            self._power_off(vm, timeout)
            self._finish(vm, VMState.STOPPED)
        vm = self._begin(name, STARTABLE, VMState.DELETING)
        self._discard(vm)
        self._announce(VMEventKind.DELETED, vm, state=None)

    def delete_all(self) -> None:
        """Delete every VM, clones before the templates their disks rest on."""
        for vm in sorted(self.list(), key=lambda vm: vm.clone_of is None):
            with contextlib.suppress(VMNotFound):  # deleted meanwhile: as good
                self.delete(vm.name)

    # ---- steps ----

    def _hypervisor(self, vm: VM) -> HypervisorBackend:
        return self._backends.by_name(Role.HYPERVISOR, vm.hypervisor, HypervisorBackend)

    def plan(self, name: str, hypervisor: str | None = None) -> dict[str, Any]:
        """What starting the VM would run (dry run): nothing is created or changed."""
        vm = self._current(name)
        if hypervisor is not None:
            backend = self._backends.named(Role.HYPERVISOR, hypervisor, HypervisorBackend)
        else:
            backend = self._hypervisor(vm)
        network = self._network(vm)
        nics: tuple[NicSpec, ...] = ()
        if network is not None and vm.mac is not None:
            nics = (network.nic(attachment_of(vm)),)
        launch = self._launch_spec(vm, nics, vm.vm_dir / "seed.iso")
        return {"hypervisor": backend.name, **backend.plan(launch)}

    def _launch_spec(
        self, vm: VM, nics: tuple[NicSpec, ...], seed_iso: Path, restore_state: Path | None = None
    ) -> LaunchSpec:
        image = self._images.get(vm.image)
        own_netns = next((nic.netns for nic in nics if nic.netns), None)
        return LaunchSpec(
            name=vm.name,
            uuid=vm.uuid,
            vm_dir=vm.vm_dir,
            spec=vm.spec,
            disk=vm.disk_path,
            disk_format=vm.disk_format,
            console_log=vm.console_log,
            kernel=image.kernel,
            initrd=image.initrd,
            cmdline=image.cmdline,
            nics=nics,
            netns=own_netns or self._settings.netns,
            extra_disks=(seed_iso,),
            restore_state=restore_state,
        )

    def _write_seed(self, vm: VM, network: NetworkBackend | None) -> Path:
        """The VM's cloud-init seed, rebuilt at each start (the VM is not running)."""
        _, public_key = managed_key(self._settings.home)
        files = {
            "meta-data": seed.meta_data(vm),
            "user-data": userdata.render(vm.user_data, public_key),
        }
        addressing = None if network is None else network.guest_addressing(attachment_of(vm))
        network_config = seed.network_config(vm, addressing)
        if network_config is not None:
            files["network-config"] = network_config
        path = vm.vm_dir / "seed.iso"
        seed.write_seed(path, files)
        return path

    def _network(self, vm: VM) -> NetworkBackend | None:
        if vm.network is None:
            return None
        return self._backends.by_name(Role.NETWORK, vm.network, NetworkBackend)

    def _plug(self, vm: VM, network: NetworkBackend) -> NicSpec:
        nic = network.plug(vm.name, attachment_of(vm))
        if Capability.HOSTFWD in network.capabilities:
            forwards = tuple(f for _, f in self._store.forwards(vm.name))
            nic = dataclasses.replace(nic, hostfwds=forwards)
        return nic

    def _unplug(self, vm: VM) -> None:
        network = self._network(vm)
        if network is not None:
            network.unplug(vm.name, attachment_of(vm))

    def _begin(self, name: str, allowed: frozenset[VMState] | set[VMState], to: VMState) -> VM:
        return self._store.transition(name, allowed, to, owner=self._me)

    def _finish(
        self,
        vm: VM,
        state: VMState,
        runtime: RuntimeInfo | None = None,
        last_error: str | None = None,
    ) -> VM:
        vm.state, vm.runtime, vm.last_error, vm.operation_owner = state, runtime, last_error, None
        self._store.save_vm(vm)
        return self._with_forwards(vm)

    def _create_disk(
        self, vm: VM, storage: StorageBackend, checked_base: tuple[Path, str] | None
    ) -> None:
        size = vm.spec.disk_bytes
        if checked_base is not None:
            base, base_format = checked_base
            base_size = storage.disk_info(base).virtual_size
            if size < base_size:
                raise InvalidRequest(
                    f"disk {vm.spec.disk} is smaller than the image's disk "
                    f"({format_size(base_size)})",
                    disk=vm.spec.disk,
                    image_disk=format_size(base_size),
                )
            storage.create_disk(vm.disk_path, size, base, base_format)
        else:
            storage.create_disk(vm.disk_path, size)

    def _power_off(self, vm: VM, timeout: float) -> None:
        hypervisor = self._hypervisor(vm)
        try:
            if vm.runtime is not None:
                hypervisor.stop(vm.runtime, vm.vm_dir, timeout)
            hypervisor.cleanup(vm.vm_dir)
            self._unplug(vm)
        except Exception as exc:
            error = _as_meda_error(exc, f"stopping VM '{vm.name}' failed")
            self._finish(vm, VMState.ERROR, runtime=vm.runtime, last_error=error.message)
            raise error from exc

    def _discard(self, vm: VM) -> None:
        """Remove everything a VM has on the host, then its record (delete, failed create).

        Every step runs even when one fails, and each tolerates what is already gone. If a
        step failed the record stays, in ``error`` with what failed, and the VM keeps the
        runtime it has: deleting it again finishes the job. A crash midway is finished the
        same way at the next start.
        """
        failures = _Failures()
        if vm.runtime is not None:
            failures.attempt("stop its process", procs.kill, vm.runtime)
        failures.attempt(
            "clean up after the hypervisor", lambda: self._hypervisor(vm).cleanup(vm.vm_dir)
        )
        failures.attempt("unplug its NIC", self._unplug, vm)
        self._store.remove_forwards(vm.name)
        network = failures.attempt("find its network", self._network, vm)
        if network is not None:
            failures.attempt("release its address", network.release, vm.name)
            failures.attempt("update the forwarding rules", network.apply_forwards)
        storage = failures.attempt(
            "find its storage",
            self._backends.by_name,
            Role.STORAGE,
            vm.storage,
            StorageBackend,
        )
        if storage is not None:
            failures.attempt("delete its disk", storage.delete_disk, vm.disk_path)
        if failures:
            message = f"could not remove all of VM '{vm.name}' ({failures}); delete it again"
            self._finish(vm, VMState.ERROR, runtime=vm.runtime, last_error=message)
            raise BackendError(message, name=vm.name)
        shutil.rmtree(vm.vm_dir, ignore_errors=True)
        self._store.delete_vm(vm.name)

    # ---- reconciliation ----

    def _reconcile(self, vm: VM) -> VM | None:
        """Bring a record in line with reality: a guest that powered off, a crashed operation.

        ``None`` when the VM no longer exists (a crashed create rolled back, a crashed delete
        finished). A VM whose hypervisor plugin is missing or broken is shown as recorded.
        """
        try:
            return self._reconcile_with_backend(vm)
        except BackendUnavailable:
            return vm

    def _reconcile_with_backend(self, vm: VM) -> VM | None:
        if vm.state == VMState.RUNNING and vm.runtime is not None:
            hypervisor = self._hypervisor(vm)
            if not hypervisor.is_running(vm.runtime):
                return self._settle_ended_run(vm, hypervisor)
        elif vm.state in TRANSITIONAL and not self._owner_alive(vm):
            with because(EventReason.RECOVERY):
                return self._recover(vm)
        return vm

    def _settle_ended_run(self, vm: VM, hypervisor: HypervisorBackend) -> VM | None:
        """The guest of ``vm``'s run ended: claim the record for that very run (it may have
        been stopped and started again since ``vm`` was read), then clean up and settle."""
        try:
            claimed = self._store.transition(
                vm.name, {VMState.RUNNING}, VMState.STOPPING, owner=self._me, same_run=vm.runtime
            )
        except MedaError:  # deleted, or moved on to another run: nothing of this one is left
            return self._store.get_vm(vm.name)
        status = hypervisor.exit_status(vm.runtime) if vm.runtime is not None else None
        hypervisor.cleanup(claimed.vm_dir)
        self._unplug(claimed)
        if status == 0:
            with because(EventReason.GUEST):
                return self._settle(claimed, VMState.STOPPED, None)
        # An end this process did not see (it did not start the hypervisor) counts as a
        # failure for restart policies, but is not written down as one.
        error = None if status is None else f"the hypervisor ended with status {status}"
        with because(EventReason.FAILURE):
            return self._settle(claimed, VMState.STOPPED, None, error)

    # ---- lifecycle policies ----

    def set_ttl(self, name: str, seconds: int) -> VM:
        """VM ``name`` is deleted ``seconds`` from now (whatever its ttl was)."""
        if not 1 <= seconds <= MAX_TTL:
            raise InvalidRequest(f"ttl must be 1 to {MAX_TTL} seconds", ttl=seconds)
        expires = datetime.now(UTC) + timedelta(seconds=seconds)

        def change(lifecycle: Lifecycle) -> None:
            lifecycle.expires = expires

        self._store.update_lifecycle(check_vm_name(name), change)
        return self.get(name)

    def count_restart(self, name: str) -> VM:
        """One more restart of VM ``name`` by its policy, now."""

        def change(lifecycle: Lifecycle) -> None:
            lifecycle.restarts += 1
            lifecycle.last_restart = datetime.now(UTC)

        return self._store.update_lifecycle(name, change)

    def announce_expiry(self, vm: VM) -> None:
        """Tell observers VM ``vm``'s ttl expired (its delete follows)."""
        self._announce(VMEventKind.EXPIRED, vm, message="its ttl expired")

    def announce_restart(self, vm: VM) -> None:
        """Tell observers VM ``vm``'s restart policy starts it now."""
        message = f"restart {vm.lifecycle.restarts} by its policy ({vm.lifecycle.restart.value})"
        self._announce(VMEventKind.RESTARTING, vm, message=message)

    def _announce(
        self,
        kind: VMEventKind,
        vm: VM,
        message: str | None = None,
        state: VMState | Literal["as-is"] | None = "as-is",
    ) -> None:
        """Tell observers and the event journal of ``kind`` happening to ``vm``."""
        now = vm.state if state == "as-is" else state
        self._emit(VMEvent(kind=kind, vm=vm.name, state=now, message=message, labels=vm.labels))

    def _owner_alive(self, vm: VM) -> bool:
        return vm.operation_owner is not None and procs.is_alive(vm.operation_owner)

    def _recover(self, vm: VM) -> VM | None:
        """Settle a VM whose operation's process died midway.

        A create is rolled back and a delete rolled forward (both end in ``None``); a start
        or stop ends running or stopped, as the hypervisor finds the guest.
        """
        if vm.state in (VMState.CREATING, VMState.DELETING):
            return self._finish_discard(vm)
        hypervisor = self._hypervisor(vm)
        runtime = vm.runtime
        if runtime is None or not hypervisor.is_running(runtime):
            runtime = hypervisor.recover(vm.vm_dir, vm.uuid)
        if runtime is not None:
            if vm.state == VMState.SNAPSHOTTING:  # it may have been left paused
                with contextlib.suppress(Exception):
                    hypervisor.resume(runtime, vm.vm_dir)
            return self._settle(vm, VMState.RUNNING, runtime)
        hypervisor.cleanup(vm.vm_dir)
        self._unplug(vm)
        return self._settle(vm, VMState.STOPPED, None)

    def _finish_discard(self, vm: VM) -> VM | None:
        try:  # take the operation over, so one process alone finishes it
            taken = self._store.transition(
                vm.name,
                {vm.state},
                VMState.DELETING,
                owner=self._me,
                taking_over=vm.operation_owner,
            )
        except MedaError:
            return self._store.get_vm(vm.name)
        runtime = self._hypervisor(vm).recover(vm.vm_dir, vm.uuid)
        taken.runtime = taken.runtime or runtime
        log.warning("finishing the %s of VM %s cut short by a crash", vm.state.value, vm.name)
        self._discard(taken)
        self._announce(VMEventKind.DELETED, vm, state=None)
        return None

    def _settle(
        self, vm: VM, state: VMState, runtime: RuntimeInfo | None, last_error: str | None = None
    ) -> VM:
        try:
            settled = self._store.transition(vm.name, {vm.state}, state)
        except MedaError:
            return self._store.get_vm(vm.name) or vm  # someone else moved it first
        settled.runtime, settled.last_error = runtime, last_error
        self._store.save_vm(settled)
        if state == VMState.STOPPED:
            self._announce(VMEventKind.STOPPED, settled, message=last_error, state=state)
        return settled
