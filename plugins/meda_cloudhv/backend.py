"""The cloud-hypervisor backend: the VMM process, then the VM through its REST API."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, ClassVar

from meda_cloudhv import config as chconfig
from meda_cloudhv.api import VmmApi
from meda_cloudhv.settings import CloudHypervisorSettings
from meda_core.plugin import (
    AGENT_VSOCK_PORT,
    AgentChannel,
    Availability,
    BackendError,
    Capability,
    HypervisorBackend,
    LaunchSpec,
    RuntimeInfo,
)
from meda_core.plugin import processes as procs

GONE = {"Shutdown", None}


#: What a restored VM's details say of its hostname (QEMU changes the seed's medium).
NO_NEW_HOSTNAME = (
    "the saved VM's: cloud-hypervisor has no removable media, so nothing tells the "
    "restored guest that its seed (its hostname) is new"
)


class CloudHypervisor(HypervisorBackend):
    name = "cloud-hypervisor"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.DIRECT_KERNEL_BOOT,
            Capability.FIRMWARE_BOOT,
            Capability.TAP,
            Capability.SNAPSHOT,
        }
    )
    priority = 20  # preferred over QEMU where it can run

    @property
    def config(self) -> CloudHypervisorSettings:
        return CloudHypervisorSettings()

    def check_available(self) -> Availability:
        config = self.config
        if shutil.which(config.binary) is None:
            return Availability.no(
                f"'{config.binary}' not found on PATH (no Debian package: install a release "
                "binary of cloud-hypervisor, or set MEDA_CH_BINARY)"
            )
        if config.firmware is not None and not config.firmware.is_file():
            return Availability.no(f"firmware {config.firmware} (MEDA_CH_FIRMWARE) is missing")
        if not os.path.exists("/dev/kvm"):
            return Availability.no("/dev/kvm does not exist: cloud-hypervisor needs KVM")
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return Availability.no("/dev/kvm is not readable and writable by this user")
        if Path("/sys/module/kvm_pvm").exists():
            return Availability.no(
                "this KVM is kvm_pvm, which runs only PVM-patched guest kernels, not stock ones"
            )
        return Availability.yes()

    def plan(self, launch: LaunchSpec) -> dict[str, Any]:
        return {
            "argv": chconfig.argv(self.config.binary, launch),
            "vm_config": chconfig.vm_config(launch, self.config.firmware),
        }

    def start(self, launch: LaunchSpec) -> RuntimeInfo:
        settings = self.config
        vm_config = chconfig.vm_config(launch, settings.firmware)
        self.cleanup(launch.vm_dir)
        argv = chconfig.argv(settings.binary, launch)
        socket = launch.vm_dir / chconfig.SOCKET
        # setsid --fork: the VMM is nobody's child here and outlives meda.
        subprocess.run(
            ["setsid", "--fork", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=10,
        )
        runtime = self._await_vmm(socket, launch, settings.start_timeout)
        try:
            with VmmApi(socket) as api:
                if launch.restore_state is not None:
                    source = chconfig.restore_source(launch.restore_state, vm_config, launch.vm_dir)
                    api.put("vm.restore", {"source_url": f"file://{source}"})
                    api.put("vm.resume")  # a restored VM starts paused
                else:
                    api.put("vm.create", vm_config)
                    api.put("vm.boot")
        except BaseException:
            self.stop(runtime, launch.vm_dir, 1.0)
            self.cleanup(launch.vm_dir)
            raise
        runtime.extra.update({"argv": argv, "vm_config": vm_config})
        if launch.restore_state is not None:
            runtime.extra["hostname"] = NO_NEW_HOSTNAME
        return runtime

    # ---- snapshots: vm.snapshot of the paused VM into a directory; meda copies the disk ----

    def save_state(self, runtime: RuntimeInfo, vm_dir: Path, state_file: Path) -> None:
        state_file.mkdir(parents=True)
        with self._api(vm_dir) as api:
            api.put("vm.pause")
            api.put("vm.snapshot", {"destination_url": f"file://{state_file}"})

    def resume(self, runtime: RuntimeInfo, vm_dir: Path) -> None:
        with self._api(vm_dir) as api:
            if api.state() == "Paused":
                api.put("vm.resume")

    def _await_vmm(self, socket: Path, launch: LaunchSpec, timeout: float) -> RuntimeInfo:
        """The VMM's identity, from its own answer to vmm.ping (it says its pid)."""
        deadline = time.monotonic() + timeout
        while not socket.exists():
            if time.monotonic() > deadline:
                log = launch.vm_dir / chconfig.LOG
                detail = log.read_text()[-1000:] if log.exists() else "no log"
                raise BackendError(f"cloud-hypervisor did not open its API socket: {detail}")
            time.sleep(0.02)
        with VmmApi(socket) as api:
            pid = int(api.ping()["pid"])
        runtime = procs.identify(pid)
        if runtime is None:
            raise BackendError("cloud-hypervisor exited right after it started")
        runtime.accelerator = "kvm"
        (launch.vm_dir / chconfig.PIDFILE).write_text(f"{pid} {launch.uuid}\n")
        return runtime

    def _api(self, vm_dir: Path) -> VmmApi:
        return VmmApi(vm_dir / chconfig.SOCKET)

    def stop(self, runtime: RuntimeInfo, vm_dir: Path, timeout: float) -> None:
        if not procs.is_alive(runtime):
            return
        with self._api(vm_dir) as api:
            try:
                if timeout > 0:  # 0: forced, the guest is not asked
                    api.put("vm.power-button")
                    deadline = time.monotonic() + timeout
                    while api.state() not in GONE and time.monotonic() < deadline:
                        time.sleep(0.1)
                api.put("vmm.shutdown")
            except BackendError:
                pass  # the VMM is gone or wedged: it is killed below
        if not procs.wait_gone(runtime, 5.0):
            procs.kill(runtime)

    def agent_channel(self, runtime: RuntimeInfo, vm_dir: Path) -> AgentChannel:
        """The hybrid vsock's socket (config.vsock_config); written from cloud-hypervisor's
        API spec, not run here: it needs the binary and a KVM that runs guests."""
        return AgentChannel(vm_dir / chconfig.VSOCK_SOCKET, vsock_port=AGENT_VSOCK_PORT)

    def watched_process(self, runtime: RuntimeInfo) -> RuntimeInfo:
        """The VMM's process: its exit is seen at once; a guest that powers off while the
        VMM lives on is seen at the reconcile interval."""
        return runtime

    def is_running(self, runtime: RuntimeInfo) -> bool:
        """The VMM lives on after its guest powers off; only a running VM counts."""
        if not procs.is_alive(runtime):
            return False
        socket = self._socket_of(runtime)
        if socket is None:
            return True
        try:
            with VmmApi(socket, timeout=2) as api:
                return api.state() not in GONE
        except BackendError:
            return True

    def _socket_of(self, runtime: RuntimeInfo) -> Path | None:
        cmdline = _cmdline(runtime.pid).split("\0")
        for arg in cmdline:
            path = chconfig.socket_option(arg)
            if path is not None and path.endswith(chconfig.SOCKET):
                return Path(path)
        return None

    def recover(self, vm_dir: Path, uuid: str) -> RuntimeInfo | None:
        try:
            pid_text, recorded_uuid = (vm_dir / chconfig.PIDFILE).read_text().split()
        except (OSError, ValueError):
            return None
        if recorded_uuid != uuid:
            return None
        runtime = procs.identify(int(pid_text))
        if runtime is None or str(vm_dir / chconfig.SOCKET) not in _cmdline(runtime.pid):
            return None  # a reused PID: not our VMM
        runtime.accelerator = "kvm"
        return runtime

    def cleanup(self, vm_dir: Path) -> None:
        """Remove the socket and pid file, ending a VMM left behind (its VM powered off)."""
        pidfile = vm_dir / chconfig.PIDFILE
        if pidfile.exists():
            uuid = pidfile.read_text().split()[-1]
            leftover = self.recover(vm_dir, uuid)
            if leftover is not None:
                self.stop(leftover, vm_dir, 0.5)
        for name in (chconfig.SOCKET, chconfig.PIDFILE, chconfig.LOG, chconfig.VSOCK_SOCKET):
            (vm_dir / name).unlink(missing_ok=True)
        shutil.rmtree(vm_dir / chconfig.RESTORE_SOURCE, ignore_errors=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""
