"""The QEMU hypervisor backend: ``qemu-system-x86_64`` in its own session, sandboxed
with seccomp, driven over QMP."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any, ClassVar

from meda_core.plugin import (
    UMASK,
    AgentChannel,
    Availability,
    BackendError,
    Capability,
    HypervisorBackend,
    LaunchSpec,
    PortForward,
    RuntimeInfo,
    create_private,
    diskprobe,
)
from meda_core.plugin import processes as procs
from meda_qemu import accel, qmp
from meda_qemu.argv import (
    agent_socket,
    build_argv,
    cdrom_id,
    hostfwd_rule,
    log_path,
    runtime_paths,
)
from meda_qemu.settings import QemuSettings

START_TIMEOUT = 60.0
#: How often a starting QEMU's monitor socket is looked for: the API answers this much
#: later than it could at worst, so it is short (a look is one stat).
MONITOR_POLL = 0.005
RESTORE_TIMEOUT = 60.0
SAVE_TIMEOUT = 120.0
MAX_BANDWIDTH = 1 << 40  # bytes/s: unlimited, in effect


class QemuHypervisor(HypervisorBackend):
    name = "qemu"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.DIRECT_KERNEL_BOOT,
            Capability.FIRMWARE_BOOT,
            Capability.TAP,
            Capability.USER_NET,
            Capability.HOSTFWD,
            Capability.SNAPSHOT,
            Capability.DISK_SWITCH,
        }
    )
    priority = 10

    @property
    def config(self) -> QemuSettings:
        return QemuSettings()

    def check_available(self) -> Availability:
        binary = self.config.binary
        if shutil.which(binary) is None:
            return Availability.no(
                f"'{binary}' not found on PATH (Debian: apt-get install qemu-system-x86)"
            )
        return Availability.yes()

    def choose_accel(self, kernel: Path | None) -> accel.AccelChoice:
        config = self.config
        if config.accel != "auto":
            return accel.AccelChoice(config.accel, f"set by MEDA_QEMU_ACCEL={config.accel}")
        return accel.choose(
            config.binary,
            kernel or config.probe_kernel,
            self.context.cache_dir / "qemu-accel.json",
            config.probe_timeout,
        )

    def _argv(self, launch: LaunchSpec, accel: str, disk_fds: tuple[int, ...] = ()) -> list[str]:
        config = self.config
        user = config.qemu_user()
        return build_argv(
            config.binary, launch, accel, config.machine, config.firmware, user, disk_fds
        )

    def plan(self, launch: LaunchSpec) -> dict[str, Any]:
        choice = self.choose_accel(launch.kernel)
        argv = self._argv(launch, choice.accel)
        return {"argv": argv, "accelerator": choice.accel, "accelerator_reason": choice.reason}

    def start(self, launch: LaunchSpec) -> RuntimeInfo:
        self.cleanup(launch.vm_dir)
        choice = self.choose_accel(launch.kernel)
        # Each start begins a new console, 0600 whatever made it before; QEMU appends to it.
        os.close(create_private(launch.console_log))
        with _opened(launch.disk) as disk_fd:
            argv = self._argv(launch, choice.accel, (disk_fd,))
            kvm = _launch(argv, launch, (disk_fd,))
        runtime = self.recover(launch.vm_dir, launch.uuid)
        if runtime is None:
            raise BackendError("qemu started but its process could not be found")
        if launch.restore_state is not None:
            self._await_restore(runtime, launch.vm_dir)
            self._change_media(runtime, launch)
        # What QEMU said it runs on, rather than what was asked for.
        runtime.accelerator = "kvm" if kvm.get("enabled") else "tcg"
        runtime.extra.update({"accelerator_reason": choice.reason, "argv": argv})
        return runtime

    def _await_restore(self, runtime: RuntimeInfo, vm_dir: Path) -> None:
        """Wait until the incoming state is loaded and the guest runs; kill QEMU if not."""
        qmp_socket, _ = runtime_paths(vm_dir)
        deadline = time.monotonic() + RESTORE_TIMEOUT
        status = "inmigrate"
        while time.monotonic() < deadline and procs.is_alive(runtime):
            status = qmp.execute(qmp_socket, "query-status")["status"]
            if status == "running":
                return
            if status == "paused":  # the state was saved paused: loaded, so let it run
                qmp.execute(qmp_socket, "cont")
                continue
            if status not in ("inmigrate", "prelaunch", "restore-vm"):
                break
            time.sleep(0.01)
        procs.kill(runtime)
        raise BackendError(f"qemu did not resume from the saved state (status: {status})")

    def _change_media(self, runtime: RuntimeInfo, launch: LaunchSpec) -> None:
        """Tell a restored guest its CD-ROMs hold new media (its own seed, not the saved
        VM's): the tray opens and closes, the guest sees a media change and rereads it."""
        qmp_socket, _ = runtime_paths(launch.vm_dir)
        try:
            for index in range(1, len(launch.extra_disks) + 1):
                qmp.execute(
                    qmp_socket, "blockdev-open-tray", {"id": cdrom_id(index), "force": True}
                )
                qmp.execute(qmp_socket, "blockdev-close-tray", {"id": cdrom_id(index)})
        except Exception as exc:
            procs.kill(runtime)
            message = f"qemu could not change the restored VM's seed medium: {exc}"
            raise BackendError(message) from exc
        runtime.extra["hostname"] = "its own: the seed medium changed, the guest rereads it"

    # ---- snapshots ----

    def save_state(self, runtime: RuntimeInfo, vm_dir: Path, state_file: Path) -> None:
        qmp_socket, _ = runtime_paths(vm_dir)
        # The default cap of 128 MiB/s made saving several times slower than the disk.
        qmp.execute(qmp_socket, "migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})
        qmp.execute(qmp_socket, "stop")
        # The sandboxed QEMU may not run `cat`: it writes to a file meda opened for it.
        fd = create_private(state_file)
        try:
            qmp.execute_with_fd(qmp_socket, fd, "state", "migrate", {"uri": "fd:state"})
        finally:
            os.close(fd)
        deadline = time.monotonic() + SAVE_TIMEOUT
        while time.monotonic() < deadline:
            info = qmp.execute(qmp_socket, "query-migrate")
            status = info.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise BackendError(f"qemu could not save the VM: {info.get('error-desc', status)}")
            time.sleep(0.01)
        qmp.execute(qmp_socket, "migrate_cancel")
        raise BackendError("qemu took too long to save the VM")

    def switch_disk(self, runtime: RuntimeInfo, vm_dir: Path, overlay: Path) -> None:
        qmp_socket, _ = runtime_paths(vm_dir)
        # Opened by meda, not by QEMU: QEMU (perhaps another user now) cannot enter vm_dir.
        node = f"overlay-{secrets.token_hex(6)}"
        with _opened(overlay) as fd:
            # As the VM's disk (build_argv): a file meda opened, never reopened read-only.
            qmp.execute_on_fdset(
                qmp_socket,
                fd,
                lambda path: (
                    "blockdev-add",
                    {
                        "driver": diskprobe.detect(overlay),  # as its storage made it
                        "node-name": node,
                        "backing": None,
                        "file": {"driver": "file", "filename": path, "auto-read-only": False},
                    },
                ),
            )
        qmp.execute(qmp_socket, "blockdev-snapshot", {"node": "disk0", "overlay": node})

    def resume(self, runtime: RuntimeInfo, vm_dir: Path) -> None:
        qmp_socket, _ = runtime_paths(vm_dir)
        qmp.execute(qmp_socket, "cont")

    def stop(self, runtime: RuntimeInfo, vm_dir: Path, timeout: float) -> None:
        if not procs.is_alive(runtime):
            return
        qmp_socket, _ = runtime_paths(vm_dir)
        steps = [("system_powerdown", timeout)] if timeout > 0 else []  # 0: forced at once
        for command, wait in [*steps, ("quit", 5.0)]:
            try:
                qmp.execute(qmp_socket, command)
            except Exception:
                continue  # the monitor is gone or hung: fall through to the next step
            if procs.wait_gone(runtime, wait):
                return
        procs.kill(runtime)
        if procs.is_alive(runtime):
            raise BackendError(f"qemu process {runtime.pid} did not exit after SIGKILL")

    def exit_status(self, runtime: RuntimeInfo) -> int | None:
        """QEMU exits 0 when its guest powers off; known for the QEMUs this process started."""
        with _CHILDREN_LOCK:
            process = _CHILDREN.get(runtime.pid)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(EXIT_STATUS_WAIT)  # exited, but perhaps not reaped yet
        with _CHILDREN_LOCK:
            return _ENDED.pop(runtime.pid, None)

    def watched_process(self, runtime: RuntimeInfo) -> RuntimeInfo:
        """QEMU's process: it exits when the guest powers off."""
        return runtime

    def is_running(self, runtime: RuntimeInfo) -> bool:
        return procs.is_alive(runtime)

    def recover(self, vm_dir: Path, uuid: str) -> RuntimeInfo | None:
        _, pidfile = runtime_paths(vm_dir)
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        runtime = procs.identify(pid)
        if runtime is None or uuid not in _cmdline(pid):
            return None  # a reused PID: not our VM
        argv = _cmdline(pid).split("\0")
        if "-accel" in argv:
            runtime.accelerator = argv[argv.index("-accel") + 1]
        return runtime

    def cleanup(self, vm_dir: Path) -> None:
        for path in (*runtime_paths(vm_dir), agent_socket(vm_dir), log_path(vm_dir)):
            path.unlink(missing_ok=True)

    def agent_channel(self, runtime: RuntimeInfo, vm_dir: Path) -> AgentChannel:
        """The virtio-serial port's socket (build_argv): one connection at a time."""
        return AgentChannel(agent_socket(vm_dir))

    def add_hostfwd(self, runtime: RuntimeInfo, vm_dir: Path, forward: PortForward) -> None:
        # Silence means success; anything printed is the reason it failed.
        output = self._monitor(vm_dir, f"hostfwd_add net0 {hostfwd_rule(forward)}")
        if output:
            raise BackendError(f"qemu: {output}", forward=forward.model_dump())

    def remove_hostfwd(self, runtime: RuntimeInfo, vm_dir: Path, forward: PortForward) -> None:
        rule = f"{forward.protocol.value}::{forward.host_port}"
        output = self._monitor(vm_dir, f"hostfwd_remove net0 {rule}")
        if not output.endswith("removed"):
            raise BackendError(f"qemu: {output}", forward=forward.model_dump())

    def _monitor(self, vm_dir: Path, command: str) -> str:
        """Run a human-monitor command (hostfwd has no QMP form) and return its output."""
        qmp_socket, _ = runtime_paths(vm_dir)
        output = qmp.execute(qmp_socket, "human-monitor-command", {"command-line": command})
        return str(output or "").strip()


@contextmanager
def _opened(disk: Path) -> Iterator[int]:
    """``disk`` opened read-write, to hand to QEMU."""
    try:
        fd = os.open(disk, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BackendError(f"disk {disk} does not exist") from None
    try:
        yield fd
    finally:
        os.close(fd)


#: The QEMUs this process started and that run, by PID; then, how the last few ended.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_ENDED: OrderedDict[int, int] = OrderedDict()
_CHILDREN_LOCK = threading.Lock()
#: Exit statuses kept for exit_status (those of VMs meda stopped are never asked for).
KEEP_ENDED = 256
#: Seconds to wait for an exited QEMU to be reaped (its process may still be a zombie).
EXIT_STATUS_WAIT = 5.0


def _reap(process: subprocess.Popen[bytes]) -> None:
    status = process.wait()
    with _CHILDREN_LOCK:
        _CHILDREN.pop(process.pid, None)
        _ENDED[process.pid] = status
        while len(_ENDED) > KEEP_ENDED:
            _ENDED.popitem(last=False)


def _launch(argv: list[str], launch: LaunchSpec, pass_fds: tuple[int, ...]) -> dict[str, Any]:
    """Run QEMU in a session of its own and wait until its monitor answers (the VM is set
    up, or loading its saved state); BackendError with what it printed if it ends first.
    Returns the monitor's first answer, ``query-kvm``: which accelerator runs."""
    with ExitStack() as files:
        log = files.enter_context(os.fdopen(create_private(log_path(launch.vm_dir)), "wb"))
        state: IO[bytes] | int = subprocess.DEVNULL
        if launch.restore_state is not None:
            state = files.enter_context(launch.restore_state.open("rb"))  # -incoming fd:0
        process = subprocess.Popen(
            argv,
            stdin=state,
            stdout=log,
            stderr=log,
            start_new_session=True,
            umask=UMASK,
            pass_fds=pass_fds,
        )
    # meda may live long (the server): reap QEMU when it ends, so it leaves no zombie; how it
    # ended is kept for exit_status.
    with _CHILDREN_LOCK:
        _CHILDREN[process.pid] = process
        _ENDED.pop(process.pid, None)  # an older QEMU's, whose PID this one reuses
    threading.Thread(
        target=_reap, args=(process,), name=f"reap-qemu-{process.pid}", daemon=True
    ).start()
    qmp_socket, _ = runtime_paths(launch.vm_dir)
    deadline = time.monotonic() + START_TIMEOUT
    while process.poll() is None:
        try:
            if qmp_socket.exists():  # not before: a refused connection is logged as an error
                answer: dict[str, Any] = qmp.execute(qmp_socket, "query-kvm")
                return answer
        except Exception:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise BackendError("qemu did not answer on its monitor", argv=argv)
        time.sleep(MONITOR_POLL)
    message = log_path(launch.vm_dir).read_text(errors="replace").strip() or "no error output"
    raise BackendError(f"qemu failed to start: {message[-2000:]}", argv=argv)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""
