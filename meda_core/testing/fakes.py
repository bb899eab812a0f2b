"""Fake backends: test tools and the reference for the conformance suites.

The fake hypervisor runs a real (idle) process per VM so that process identity,
recovery and cleanup are exercised for real; the fake storage writes sparse files.
They are never selected unless a test registers them.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

from meda_core import hookimpl
from meda_core.backends.catalogue import BackendRegistry
from meda_core.backends.roles import (
    AgentChannel,
    Availability,
    Capability,
    DiskInfo,
    HypervisorBackend,
    ImageFiles,
    LaunchSpec,
    NetworkAttachment,
    NetworkBackend,
    NicKind,
    NicSpec,
    RegistryBackend,
    StorageBackend,
)
from meda_core.errors import BackendError, InvalidRequest, NotFound
from meda_core.host import namespaces as netns
from meda_core.host import processes as procs
from meda_core.inputs.references import Reference
from meda_core.models import ForwardListener, PortForward, RuntimeInfo
from meda_core.network.macs import random_mac
from meda_core.state.operations import Progress
from meda_core.testing.fakeagent import FakeAgent

#: The fake agent's channel in a VM's folder (a plain file: it answers while it exists).
AGENT_SOCKET = "agent.sock"
_IDLE = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "time.sleep(3600)"
)


class FakeHypervisor(HypervisorBackend):
    """Runs an idle Python process in place of a VM; ``fail_start`` makes starts fail.

    A snapshot's state file records the VM's console; a restore writes it back first.
    """

    name = "fake"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.SNAPSHOT, Capability.DISK_SWITCH}
    )
    priority = 100
    fail_start: ClassVar[bool] = False
    #: False: guests get no agent channel (as a hypervisor without one).
    agent: ClassVar[bool] = True
    _children: ClassVar[dict[int, subprocess.Popen[bytes]]] = {}
    #: How reaped children ended (SIGTERM: as a guest powering off, 0; SIGKILL: -9).
    _ended: ClassVar[dict[int, int]] = {}

    def check_available(self) -> Availability:
        return Availability.yes()

    def start(self, launch: LaunchSpec) -> RuntimeInfo:
        if self.fail_start:
            raise BackendError("fake hypervisor told to fail")
        if not launch.disk.exists():
            raise BackendError(f"disk {launch.disk} does not exist")
        child = subprocess.Popen(
            [sys.executable, "-c", _IDLE, f"meda-fake-{launch.uuid}"], start_new_session=True
        )
        self._children[child.pid] = child
        (launch.vm_dir / "fake.pid").write_text(str(child.pid))
        if launch.restore_state is not None:
            saved = launch.restore_state.read_text()
            launch.console_log.write_text(f"{saved}fake VM {launch.name} restored\n")
        else:
            launch.console_log.write_text(f"fake VM {launch.name} booted\n")
        if self.agent:  # the fake agent answers while this exists
            (launch.vm_dir / AGENT_SOCKET).touch()
        runtime = procs.identify(child.pid)
        assert runtime is not None
        runtime.accelerator = "none"
        return runtime

    def _reap(self, pid: int) -> None:
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            del self._children[pid]
            self._ended[pid] = child.returncode

    def exit_status(self, runtime: RuntimeInfo) -> int | None:
        child = self._children.get(runtime.pid)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)
        self._reap(runtime.pid)
        return self._ended.pop(runtime.pid, None)

    def stop(self, runtime: RuntimeInfo, vm_dir: Path, timeout: float) -> None:
        child = self._children.pop(runtime.pid, None)
        if child is not None:
            child.terminate()
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        else:
            procs.kill(runtime)

    def watched_process(self, runtime: RuntimeInfo) -> RuntimeInfo:
        return runtime

    def is_running(self, runtime: RuntimeInfo) -> bool:
        self._reap(runtime.pid)
        return procs.is_alive(runtime)

    def recover(self, vm_dir: Path, uuid: str) -> RuntimeInfo | None:
        try:
            pid = int((vm_dir / "fake.pid").read_text())
        except (OSError, ValueError):
            return None
        self._reap(pid)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            return None
        return procs.identify(pid) if f"meda-fake-{uuid}" in cmdline else None

    def cleanup(self, vm_dir: Path) -> None:
        (vm_dir / "fake.pid").unlink(missing_ok=True)
        (vm_dir / AGENT_SOCKET).unlink(missing_ok=True)

    def agent_channel(self, runtime: RuntimeInfo, vm_dir: Path) -> AgentChannel | None:
        return AgentChannel(vm_dir / AGENT_SOCKET) if self.agent else None

    def save_state(self, runtime: RuntimeInfo, vm_dir: Path, state_file: Path) -> None:
        state_file.write_text((vm_dir / "console.log").read_text())

    def switch_disk(self, runtime: RuntimeInfo, vm_dir: Path, overlay: Path) -> None:
        if not overlay.exists():
            raise BackendError(f"no overlay at {overlay}")

    def resume(self, runtime: RuntimeInfo, vm_dir: Path) -> None:
        pass


class FakeStorage(StorageBackend):
    """A disk is a one-line file: ``fake <size> <base>``; ``fail_create`` for errors."""

    name = "fake"
    disk_format = "fake"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.COPY_ON_WRITE})
    priority = 100
    fail_create: ClassVar[bool] = False

    def check_available(self) -> Availability:
        return Availability.yes()

    def create_disk(
        self, dest: Path, size: int, base: Path | None = None, base_format: str | None = None
    ) -> DiskInfo:
        if size <= 0:
            raise InvalidRequest("disk size must be positive")
        if self.fail_create:
            raise BackendError("fake storage told to fail")
        if base is not None and not base.exists():
            raise BackendError(f"base disk {base} does not exist")
        dest.write_text(f"fake {size} {base or ''}\n")
        return self.disk_info(dest)

    def delete_disk(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def flatten(self, source: Path, dest: Path) -> DiskInfo:
        dest.write_text(f"fake {self.disk_info(source).virtual_size} \n")
        return self.disk_info(dest)

    def disk_info(self, path: Path) -> DiskInfo:
        if not path.exists():
            raise BackendError(f"no disk at {path}")
        with path.open("rb") as disk:
            header = disk.readline().decode(errors="replace").split(" ")
        if header[0] != "fake":
            return DiskInfo("raw", path.stat().st_size, path.stat().st_blocks * 512)
        base = header[2].strip() if len(header) > 2 else ""
        return DiskInfo(
            "fake", int(header[1]), path.stat().st_blocks * 512, Path(base) if base else None
        )


class FakeNetwork(NetworkBackend):
    """Leases from the real lease table on a made-up subnet; no host devices at all."""

    name = "fake"
    priority = 100
    subnet = ipaddress.IPv4Network("10.99.0.0/24")
    plugged: ClassVar[set[str]] = set()
    forwards_applied: ClassVar[int] = 0
    #: The forwards the host would have: what the last apply_forwards found in the store.
    applied: ClassVar[set[tuple[str, int, str]]] = set()

    def check_available(self) -> Availability:
        return Availability.yes()

    def allocate(self, vm: str, isolated: bool = False) -> NetworkAttachment:
        hosts = [str(ip) for ip in self.subnet.hosts()][1:]
        lease = self.context.leases.allocate(self.name, vm, hosts, random_mac)
        return NetworkAttachment(
            mac=lease.mac,
            ip=lease.ip,
            tap=f"fake-{vm}",
            subnet=str(self.subnet),
            gateway=str(next(self.subnet.hosts())),
            netns=f"fake-{vm}" if isolated else None,
        )

    def release(self, vm: str) -> None:
        self.plugged.discard(vm)
        self.context.leases.release(self.name, vm)

    def plug(self, vm: str, attachment: NetworkAttachment) -> NicSpec:
        self.plugged.add(vm)
        return self.nic(attachment)

    def nic(self, attachment: NetworkAttachment) -> NicSpec:
        # No namespace even for an isolated VM: the fake's namespaces are names only.
        return NicSpec(kind=NicKind.TAP, mac=attachment.mac, tap=attachment.tap)

    def unplug(self, vm: str, attachment: NetworkAttachment) -> None:
        self.plugged.discard(vm)

    def check_host_port(self, forward: PortForward) -> str | None:
        return netns.port_problem(None, forward.host_port, forward.protocol.value)

    def forward_listeners(self, forward: PortForward) -> list[ForwardListener]:
        return [ForwardListener(address=f"0.0.0.0:{forward.host_port}", netns=None, by="fake")]

    def apply_forwards(self) -> None:
        type(self).forwards_applied += 1
        forwards = self.context.vms.forwards()
        type(self).applied = {(vm, f.host_port, f.protocol.value) for vm, f in forwards}

    def restore(self) -> None:
        pass

    def orphans(self) -> list[str]:
        vms = {vm.name for vm in self.context.vms.list_vms()}
        return [
            f"lease {lease.ip} of missing VM '{lease.vm}'"
            for lease in self.context.leases.all(self.name)
            if lease.vm not in vms
        ]

    def remove_orphans(self) -> list[str]:
        found = self.orphans()
        vms = {vm.name for vm in self.context.vms.list_vms()}
        for lease in self.context.leases.all(self.name):
            if lease.vm not in vms:
                self.context.leases.release(self.name, lease.vm)
        return found


class FakeRegistry(RegistryBackend):
    """A registry in a local folder: copies of the files plus a JSON manifest per tag."""

    name = "fake"
    priority = 100

    def check_available(self) -> Availability:
        return Availability.yes()

    def _root(self, reference: Reference) -> Path:
        key = hashlib.sha256(
            f"{reference.registry}/{reference.repository}:{reference.tag}".encode()
        )
        return self.context.cache_dir / "fake-registry" / key.hexdigest()[:32]

    def manifest_digest(self, reference: Reference) -> str | None:
        manifest = self._root(reference) / "manifest.json"
        if not manifest.exists():
            return None
        return "sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()

    def push(self, files: ImageFiles, reference: Reference, progress: Progress) -> str:
        root = self._root(reference)
        root.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {
            "disk_format": files.disk_format,
            "cmdline": files.cmdline,
            "ready_port": files.ready_port,
        }
        for field in ("disk", "kernel", "initrd"):
            path = getattr(files, field)
            if path is not None:
                shutil.copyfile(path, root / field)
                meta[field] = field
        (root / "manifest.json").write_text(json.dumps(meta, sort_keys=True))
        progress(1, 1)
        digest = self.manifest_digest(reference)
        assert digest is not None
        return digest

    def pull(self, reference: Reference, workdir: Path, progress: Progress) -> ImageFiles:
        root = self._root(reference)
        digest = self.manifest_digest(reference)
        if digest is None:
            raise NotFound(f"no image {reference} in the fake registry")
        meta = json.loads((root / "manifest.json").read_text())
        paths = {}
        for field in ("disk", "kernel", "initrd"):
            if field in meta:
                shutil.copyfile(root / field, workdir / field)
                paths[field] = workdir / field
        progress(1, 1)
        return ImageFiles(
            disk=paths.get("disk"),
            disk_format=meta["disk_format"],
            kernel=paths.get("kernel"),
            initrd=paths.get("initrd"),
            cmdline=meta["cmdline"],
            digest=digest,
            ready_port=meta.get("ready_port"),
        )


class FakePlugin:
    """Registers the fake backends (``pm.add_plugin("fake", FakePlugin())``)."""

    @hookimpl
    def meda_register_backends(self, registry: BackendRegistry) -> None:
        registry.add(FakeHypervisor)
        registry.add(FakeStorage)
        registry.add(FakeNetwork)
        registry.add(FakeRegistry)
        registry.add(FakeAgent)
