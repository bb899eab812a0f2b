from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import secrets
import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from meda_core.backends.roles import AGENT_PORT_NAME, AgentChannel, BackendContext, LaunchSpec
from meda_core.errors import BackendError, BackendUnavailable
from meda_core.facade import Meda
from meda_core.models import VM, CreateVMRequest, PortForward, RuntimeInfo, VMSpec
from meda_core.settings import Settings
from meda_core.testing.conformance import HypervisorConformance
from meda_core.testing.guest import (
    AGENT_PORT_MARKER,
    DISK_BOOT_MARKER,
    HOSTNAME_MARKER,
    POWEROFF_MARKER,
    BootableGuest,
    boot_sector_disk,
)
from meda_core.testing.host import free_port
from meda_core.testing.intruder import (
    NOBODY,
    open_to_others,
    reachable_dir,
    readable_by_nobody,
    run_as_nobody,
)
from meda_core.testing.pytest_plugin import wait_for_text
from meda_qcow2 import Qcow2Storage
from meda_qemu import QemuHypervisor, accel, qmp
from meda_qemu.argv import agent_socket, build_argv, runtime_paths
from meda_qemu.settings import DEFAULT_USER, QemuSettings


def _launch(vm_dir: Path, guest: BootableGuest | None = None) -> LaunchSpec:
    return LaunchSpec(
        name="t",
        uuid=str(uuid.uuid4()),
        vm_dir=vm_dir,
        spec=VMSpec(memory="512M", cpus=2),
        disk=vm_dir / "disk.qcow2",
        disk_format="qcow2",
        console_log=vm_dir / "console.log",
        kernel=guest.kernel if guest else None,
        initrd=guest.initrd if guest else None,
        cmdline=guest.cmdline if guest else None,
    )


def test_argv_direct_kernel_boot(tmp_path: Path) -> None:
    launch = _launch(tmp_path)
    launch = LaunchSpec(**{**launch.__dict__, "kernel": Path("/k"), "initrd": Path("/i")})
    argv = build_argv("qemu-system-x86_64", launch, "tcg", "q35", None)
    assert argv[argv.index("-m") + 1] == "512M"
    assert argv[argv.index("-smp") + 1] == "2"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-kernel") + 1] == "/k"
    assert argv[argv.index("-append") + 1] == "console=ttyS0"
    assert launch.uuid in argv
    assert not any("vhost" in arg for arg in argv)


def test_argv_firmware_boot(tmp_path: Path) -> None:
    argv = build_argv("qemu", _launch(tmp_path), "kvm", "q35", Path("/fw.bin"))
    assert argv[argv.index("-bios") + 1] == "/fw.bin"
    assert argv[argv.index("-cpu") + 1] == "host"
    assert "-kernel" not in argv


@pytest.mark.parametrize("disk_format", ["qcow2", "raw"])
def test_the_disk_is_opened_in_the_format_its_storage_made(
    tmp_path: Path, disk_format: str
) -> None:
    launch = dataclasses.replace(_launch(tmp_path), disk_format=disk_format)
    for fds in ((), (7,)):
        argv = build_argv("qemu", launch, "tcg", "q35", None, disk_fds=fds)
        drive = argv[argv.index("-drive") + 1]
        assert f",format={disk_format}," in drive and drive.count("format=") == 1


@pytest.mark.parametrize("disk_format", ["vvfat", "vmdk", "qcow2,backing.driver=file"])
def test_a_disk_format_meda_does_not_check_is_never_opened(
    tmp_path: Path, disk_format: str
) -> None:
    """A storage plugin's word is not enough: QEMU opens only what meda's probe checks."""
    launch = dataclasses.replace(_launch(tmp_path), disk_format=disk_format)
    with pytest.raises(BackendError, match="opens only raw and qcow2"):
        build_argv("qemu", launch, "tcg", "q35", None)


def test_accel_choice_is_cached_per_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake_boot_test(binary: str, kernel: Path, timeout: float) -> str | None:
        calls.append(kernel)
        return "KVM internal error"

    monkeypatch.setattr(accel, "kvm_device_problem", lambda: None)
    monkeypatch.setattr(accel, "boot_test", fake_boot_test)
    cache = tmp_path / "accel.json"
    first = accel.choose("qemu", Path("/k"), cache, 1)
    second = accel.choose("qemu", Path("/k"), cache, 1)
    assert first == second and first.accel == "tcg" and "internal error" in first.reason
    assert len(calls) == 1
    data = json.loads(cache.read_text())
    data["key"] = "another-boot:qemu"
    cache.write_text(json.dumps(data))
    accel.choose("qemu", Path("/k"), cache, 1)
    assert len(calls) == 2


def test_no_kernel_to_probe_means_tcg_and_no_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel, "kvm_device_problem", lambda: None)
    choice = accel.choose("qemu", None, tmp_path / "accel.json", 1)
    assert choice.accel == "tcg" and "not verified" in choice.reason
    assert not (tmp_path / "accel.json").exists()


def test_missing_binary_is_explained(
    backend_context: BackendContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDA_QEMU_BINARY", "qemu-system-nonexistent")
    reason = QemuHypervisor(backend_context).check_available().reason
    assert reason and "not found" in reason and "apt-get install" in reason


@pytest.mark.vm
def test_real_kvm_probe_gives_a_verdict(test_guest: BootableGuest, tmp_path: Path) -> None:
    """On these hosts KVM cannot run a stock kernel: the probe must notice, not assume."""
    choice = accel.choose("qemu-system-x86_64", test_guest.kernel, tmp_path / "a.json", 20)
    assert choice.accel in {"kvm", "tcg"} and choice.reason
    if accel.kvm_device_problem() is None and Path("/sys/module/kvm_pvm").exists():
        assert choice.accel == "tcg", choice.reason


@pytest.mark.vm
class TestQemuConformance(HypervisorConformance):
    @pytest.fixture
    def stop_timeout(self) -> float:
        return 3.0  # most of these tests stop a guest before it boots: go on to `quit` soon

    @pytest.fixture
    def backend(self, backend_context: BackendContext) -> QemuHypervisor:
        return QemuHypervisor(backend_context)

    @pytest.fixture
    def launch(self, tmp_path: Path, test_guest: BootableGuest, backend_context: BackendContext):  # type: ignore[no-untyped-def]
        storage = Qcow2Storage(backend_context)

        def make(name: str) -> LaunchSpec:
            vm_dir = tmp_path / name
            vm_dir.mkdir()
            launch = _launch(vm_dir, test_guest)
            storage.create_disk(launch.disk, 64 << 20)
            return launch

        return make

    def test_guest_boots_and_powers_off_on_acpi(
        self,
        backend: QemuHypervisor,
        launch,
        test_guest: BootableGuest,  # type: ignore[no-untyped-def]
    ) -> None:
        spec = launch("acpi")
        runtime = backend.start(spec)
        try:
            wait_for_text(spec.console_log, test_guest.marker, timeout=60)
            assert runtime.accelerator in {"kvm", "tcg"}
            backend.stop(runtime, spec.vm_dir, timeout=30)
            assert not backend.is_running(runtime)
            assert POWEROFF_MARKER in spec.console_log.read_text()  # graceful, not killed
        finally:
            backend.stop(runtime, spec.vm_dir, timeout=1)
            backend.cleanup(spec.vm_dir)


@pytest.mark.vm
def test_disk_boots_through_firmware(
    tmp_path: Path, backend_context: BackendContext, test_guest: BootableGuest
) -> None:
    base = boot_sector_disk(tmp_path / "base.raw")
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    launch = _launch(vm_dir)  # no kernel: SeaBIOS boots the disk
    Qcow2Storage(backend_context).create_disk(launch.disk, 64 << 20, base, "raw")
    backend = QemuHypervisor(backend_context)
    runtime = backend.start(launch)
    try:
        wait_for_text(launch.console_log, DISK_BOOT_MARKER, timeout=60)
    finally:
        backend.stop(runtime, vm_dir, timeout=0.5)  # the boot sector ignores ACPI: forced
        backend.cleanup(vm_dir)
    assert not backend.is_running(runtime)


def _drive(vm: VM, device: str = "disk0") -> dict[str, object]:
    """What QEMU itself says it opened as ``device``."""
    qmp_socket, _ = runtime_paths(vm.vm_dir)
    [found] = [b for b in qmp.execute(qmp_socket, "query-block") if b["device"] == device]
    inserted: dict[str, object] = found["inserted"]
    return inserted


@pytest.fixture
def reachable() -> Iterator[Path]:
    with reachable_dir() as path:
        yield path


@pytest.mark.vm
def test_a_home_whose_path_carries_options_runs_a_vm_through_its_lifecycle(
    reachable: Path, test_guest: BootableGuest, guest_image: dict[str, object]
) -> None:
    """Unescaped, ``file=<home>/vms/...`` would end at the comma and read the rest as
    options (``readonly=on``, ``snapshot=on``): QEMU must open exactly meda's files, and
    what it writes there (console, saved state) no local user reads."""
    home = reachable / "m,h" / "x,readonly=on,snapshot=on"
    settings = Settings(
        home=home, hypervisor="qemu", storage="qcow2", network="user", stop_timeout=5
    )
    meda = Meda(settings)
    meda.images.import_files("guest", **guest_image)  # type: ignore[arg-type]
    vm = meda.vms.create(CreateVMRequest(name="commas", image="guest", memory="256M"))
    try:
        meda.vms.start("commas")
        wait_for_text(vm.console_log, test_guest.marker, timeout=60)
        # The disk is a file meda opened and passed (fd set 1); the seed goes by its path.
        drive = _drive(vm)
        assert drive["file"] == "/dev/fdset/1" and drive["ro"] is False
        seed = _drive(vm, "disk1")
        assert seed["file"] == str(vm.vm_dir / "seed.iso") and seed["ro"] is True
        snapshot = meda.snapshots.snapshot("commas").snapshot  # saved, the disk switched
        assert snapshot is not None and _drive(vm)["ro"] is False
        made = [vm.console_log, vm.disk_path, snapshot.state_file, snapshot.disk]
        if os.geteuid() == 0:
            home.parent.chmod(0o755)  # only meda's own modes stand in the way
            assert readable_by_nobody(made) == [] and open_to_others(home) == []
        meda.vms.stop("commas")
        assert meda.snapshots.restore("commas").state.value == "running"
        assert _drive(vm)["file"] == "/dev/fdset/1"
        assert _drive(vm, "disk1")["file"] == str(vm.vm_dir / "seed.iso")
    finally:
        meda.vms.delete_all()


def test_option_values_escape_commas(tmp_path: Path) -> None:
    vm_dir = tmp_path / "a,b=c" / "vm"
    launch = dataclasses.replace(_launch(vm_dir), extra_disks=(vm_dir / "seed,iso",))
    argv = build_argv("qemu", launch, "tcg", "q35", None)
    drives = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-drive"]
    assert drives[0].startswith(f"file={tmp_path}/a,,b=c/vm/disk.qcow2,if=")
    assert drives[1].startswith(f"file={tmp_path}/a,,b=c/vm/seed,,iso,if=")
    assert f"path={tmp_path}/a,,b=c/vm/console.log" in argv[argv.index("-chardev") + 1]
    assert argv[argv.index("-qmp") + 1] == f"unix:{tmp_path}/a,,b=c/vm/qmp.sock,server=on,wait=off"
    assert argv[argv.index("-pidfile") + 1] == f"{tmp_path}/a,b=c/vm/qemu.pid"  # not an option


def test_the_disk_is_passed_open_not_named(tmp_path: Path) -> None:
    argv = build_argv("qemu", _launch(tmp_path), "tcg", "q35", None, disk_fds=(7,))
    assert argv[argv.index("-drive") + 1].startswith("file=/dev/fdset/1,")
    assert argv[argv.index("-add-fd") + 1] == "fd=7,set=1"
    assert str(tmp_path / "disk.qcow2") not in " ".join(argv)


def test_qemu_runs_sandboxed_and_restores_from_a_file_it_is_handed(tmp_path: Path) -> None:
    launch = dataclasses.replace(_launch(tmp_path), restore_state=tmp_path / "state")
    argv = build_argv("qemu", launch, "tcg", "q35", None)
    sandbox = argv[argv.index("-sandbox") + 1].split(",")
    assert sandbox[0] == "on"
    assert {"obsolete=deny", "elevateprivileges=deny", "spawn=deny", "resourcecontrol=deny"} <= set(
        sandbox
    )
    assert argv[argv.index("-incoming") + 1] == "fd:0"
    assert "-daemonize" not in argv  # daemonizing calls setsid(), which the sandbox denies


def _uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("Uid:")]
    return int(line.split()[1])


def _token(port: int) -> str:
    """The guest's boot token (held only in its memory), through a forwarded port."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/token", timeout=2) as answer:
                return str(answer.read().decode().strip())
        except OSError:
            assert time.monotonic() < deadline, f"nothing answers on port {port}"
            time.sleep(0.3)


def _forward(meda: Meda, name: str) -> int:
    port = free_port()
    meda.network.add_forward(name, PortForward(host_port=port, guest_port=80))
    return port


@pytest.mark.vm
def test_qemu_as_an_unprivileged_user_runs_the_whole_lifecycle(
    tmp_path: Path, guest_image: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """QEMU drops to ``nobody`` and can open nothing under MEDA_HOME (0700, root's) later:
    forwards, snapshot (state and overlay handed over as file descriptors), restore and
    clone must work all the same."""
    if os.geteuid() != 0:
        pytest.skip("-runas needs root")
    monkeypatch.setenv("MEDA_QEMU_USER", "nobody")
    settings = Settings(
        home=tmp_path / "home", hypervisor="qemu", storage="qcow2", network="user", stop_timeout=5
    )
    meda = Meda(settings)
    meda.images.import_files("guest", **guest_image)  # type: ignore[arg-type]
    meda.vms.create(CreateVMRequest(name="tpl", image="guest", memory="256M", template=True))
    try:
        vm = meda.vms.start("tpl")
        assert vm.runtime is not None and _uid(vm.runtime.pid) == NOBODY
        port = _forward(meda, "tpl")  # bound by QEMU as nobody
        token = _token(port)
        meda.snapshots.snapshot("tpl")
        assert _token(port) == token  # it kept running on its new overlay
        meda.vms.stop("tpl")
        restored = meda.snapshots.restore("tpl")
        assert restored.runtime is not None and _uid(restored.runtime.pid) == NOBODY
        assert _token(port) == token  # the saved memory, not a new boot
        clone = meda.snapshots.clone("tpl", "c1")
        assert clone.runtime is not None and _uid(clone.runtime.pid) == NOBODY
        assert _token(_forward(meda, "c1")) == token
    finally:
        meda.vms.delete_all()


@pytest.mark.vm
def test_a_clone_takes_its_own_hostname_from_its_seed_medium_and_deletes_at_once(
    tmp_path: Path, guest_image: dict[str, object]
) -> None:
    """A clone is the template's memory: cloud-init does not run again. Its seed CD-ROM's
    medium changes after the restore; the guest sees a media change and takes the
    hostname in the new seed, with no agent in it."""
    settings = Settings(
        home=tmp_path / "home", hypervisor="qemu", storage="qcow2", network="user", stop_timeout=30
    )
    meda = Meda(settings)
    meda.images.import_files("guest", **guest_image)  # type: ignore[arg-type]
    meda.vms.create(CreateVMRequest(name="tpl", image="guest", memory="256M", template=True))
    try:
        template = meda.vms.start("tpl")
        wait_for_text(template.console_log, f"{HOSTNAME_MARKER}tpl", timeout=60)
        meda.snapshots.snapshot("tpl")
        meda.vms.stop("tpl", timeout=0)
        clones = [meda.snapshots.clone("tpl", name) for name in ("c1", "c2")]
        for clone in clones:
            seconds = wait_for_text(clone.console_log, f"{HOSTNAME_MARKER}{clone.name}", 30)
            print(f"{clone.name} took its hostname {seconds:.2f}s after the clone returned")
            assert clone.runtime is not None and "its own" in clone.runtime.extra["hostname"]
        started = time.monotonic()
        meda.vms.delete("c1")
        print(f"delete of a running clone: {time.monotonic() - started:.2f}s")
        assert time.monotonic() - started < 10
    finally:
        meda.vms.delete_all()


@pytest.mark.vm
def test_a_qemu_told_to_run_a_program_cannot(
    tmp_path: Path, backend_context: BackendContext, test_guest: BootableGuest
) -> None:
    """What a compromised QEMU would do first: fork and exec. Asked to through its own
    monitor (``migrate exec:``), the sandboxed QEMU gets no further than the fork."""
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    launch = _launch(vm_dir, test_guest)
    Qcow2Storage(backend_context).create_disk(launch.disk, 64 << 20)
    backend = QemuHypervisor(backend_context)
    runtime = backend.start(launch)
    proof = tmp_path / "qemu-ran-a-program"
    try:
        status = Path(f"/proc/{runtime.pid}/status").read_text()
        qmp_socket, _ = runtime_paths(vm_dir)
        with contextlib.suppress(Exception):  # the monitor may die with QEMU mid-answer
            qmp.execute(qmp_socket, "migrate", {"uri": f"exec:touch {proof}"})
        time.sleep(1)
        assert not proof.exists()
        assert "Seccomp:\t2" in status  # a filter, not luck
    finally:
        backend.stop(runtime, vm_dir, timeout=1)
        backend.cleanup(vm_dir)


@pytest.mark.parametrize(
    ("setting", "account_exists", "expected"),
    [
        ("auto", True, DEFAULT_USER),
        ("auto", False, None),
        ("root", True, None),
        ("nobody", True, "nobody"),
    ],
)
def test_which_account_qemu_runs_as(
    setting: str, account_exists: bool, expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can hand QEMU to another account")
    real = pwd.getpwnam
    monkeypatch.setattr(
        pwd,
        "getpwnam",
        lambda name: real("nobody") if account_exists else (_ for _ in ()).throw(KeyError(name)),
    )
    assert QemuSettings(user=setting).qemu_user() == expected


def test_an_account_that_is_not_there_is_a_clear_refusal() -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can hand QEMU to another account")
    with pytest.raises(BackendUnavailable, match="not an account"):
        QemuSettings(user="meda-no-such-account").qemu_user()


@pytest.mark.vm
def test_by_default_qemu_runs_as_its_own_account(
    tmp_path: Path, guest_image: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the account exists (scripts/setup.sh makes it), a VM's QEMU is never root."""
    try:
        expected = pwd.getpwnam(DEFAULT_USER).pw_uid
    except KeyError:
        pytest.skip(f"no account {DEFAULT_USER} here (scripts/setup.sh adds it)")
    if os.geteuid() != 0:
        pytest.skip("only root can hand QEMU to another account")
    monkeypatch.delenv("MEDA_QEMU_USER", raising=False)
    settings = Settings(
        home=tmp_path / "home", hypervisor="qemu", storage="qcow2", network="user", stop_timeout=5
    )
    meda = Meda(settings)
    meda.images.import_files("guest", **guest_image)  # type: ignore[arg-type]
    meda.vms.create(CreateVMRequest(name="own", image="guest", memory="256M"))
    try:
        vm = meda.vms.start("own")
        assert vm.runtime is not None and _uid(vm.runtime.pid) == expected
    finally:
        meda.vms.delete_all()


# ---- the guest agent's channel: a virtio-serial port whose host end is agent.sock ----

ECHO_AGENT_MARKER = "MEDA-ECHO-AGENT-ON="  # tests/echo_agent.c


def _values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_the_agent_gets_a_named_virtio_serial_port_on_a_socket(tmp_path: Path) -> None:
    vm_dir = tmp_path / "a,b" / "vm"
    argv = build_argv("qemu", _launch(vm_dir), "tcg", "q35", None)
    devices = _values(argv, "-device")
    assert "virtio-serial-pci,id=agentbus" in devices
    port = f"virtserialport,bus=agentbus.0,chardev=agentchr,name={AGENT_PORT_NAME}"
    assert devices.index(port) > devices.index("virtio-serial-pci,id=agentbus")
    escaped = str(vm_dir / "agent.sock").replace(",", ",,")
    assert f"socket,id=agentchr,path={escaped},server=on,wait=off" in _values(argv, "-chardev")
    # The console is appended to: rotating it (copy, truncate) leaves QEMU at the new end.
    assert _values(argv, "-chardev")[0].endswith(",append=on")


def test_the_agent_channel_is_the_ports_socket_and_cleanup_removes_it(
    tmp_path: Path, backend_context: BackendContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDA_QEMU_ACCEL", "tcg")
    backend = QemuHypervisor(backend_context)
    runtime = RuntimeInfo(pid=1, start_ticks=0, boot_id="b")
    assert backend.agent_channel(runtime, tmp_path) == AgentChannel(tmp_path / "agent.sock")
    assert agent_socket(tmp_path) == tmp_path / "agent.sock"
    assert f"name={AGENT_PORT_NAME}" in " ".join(backend.plan(_launch(tmp_path))["argv"])
    agent_socket(tmp_path).touch()
    backend.cleanup(tmp_path)
    assert not agent_socket(tmp_path).exists()


def _echo(channel: AgentChannel, timeout: float = 30) -> None:
    """Bytes sent into the agent's socket come back from the guest's echo agent."""
    assert channel.vsock_port is None
    payload = f"ping {secrets.token_hex(8)}\n".encode()
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(channel.socket))
        conn.sendall(payload)
        got = b""
        while not got.endswith(payload) and time.monotonic() < deadline:
            chunk = conn.recv(4096)
            assert chunk, f"the port closed after {got!r}"
            got += chunk
    assert got.endswith(payload)


_CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    print("connected")
except OSError as e:
    print(type(e).__name__)
"""


def _nobody_connects(path: Path) -> str:
    """What happens when user ``nobody`` connects to the unix socket ``path``."""
    return run_as_nobody(_CONNECT, str(path), timeout=30).strip()


@pytest.mark.vm
def test_the_agents_port_reaches_the_guest_is_roots_alone_and_survives_a_restore(
    reachable: Path, echo_agent_guest: BootableGuest
) -> None:
    """The guest finds the port by its name; the host reaches it through agent.sock, which
    no other local user may connect to; a restore (a layout-3 snapshot) makes the socket
    anew and the guest's agent, restored from memory, answers on it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to try the socket as another user")
    home = reachable / "home"
    settings = Settings(
        home=home, hypervisor="qemu", storage="qcow2", network="user", stop_timeout=5
    )
    meda = Meda(settings)
    guest = echo_agent_guest
    meda.images.import_files(
        "agent", kernel=guest.kernel, initrd=guest.initrd, cmdline=guest.cmdline
    )
    vm = meda.vms.create(CreateVMRequest(name="agent", image="agent", memory="256M"))
    hypervisor = meda.backends.hypervisor()
    try:
        running = meda.vms.start("agent")
        wait_for_text(vm.console_log, f"{AGENT_PORT_MARKER}vport", timeout=60)
        wait_for_text(vm.console_log, ECHO_AGENT_MARKER, timeout=30)
        assert running.runtime is not None
        channel = hypervisor.agent_channel(running.runtime, vm.vm_dir)
        assert channel is not None
        _echo(channel)
        home.parent.chmod(0o755)  # only meda's own modes stand in the way
        assert _nobody_connects(channel.socket) == "PermissionError"
        assert open_to_others(home) == [] and vm.console_log.stat().st_mode & 0o777 == 0o600
        meda.snapshots.snapshot("agent")
        meda.vms.stop("agent", timeout=0)
        assert not channel.socket.exists()  # cleaned up with the stopped VM
        restored = meda.snapshots.restore("agent")
        assert restored.runtime is not None
        _echo(hypervisor.agent_channel(restored.runtime, vm.vm_dir) or channel)
        # The probe has teeth: with the modes opened up, nobody does connect.
        for path in (home, home / "vms", vm.vm_dir, channel.socket):
            path.chmod(0o777)
        assert _nobody_connects(channel.socket) == "connected"
    finally:
        meda.vms.delete_all()


@pytest.mark.vm
def test_the_console_is_private_fresh_at_each_start_and_rotatable(
    tmp_path: Path, backend_context: BackendContext, test_guest: BootableGuest
) -> None:
    """The console is 0600 whatever was there, begins anew at each start, and QEMU writes
    at its end after meda truncates it (a rotation): no hole of zeros where it was."""
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    launch = _launch(vm_dir, test_guest)
    Qcow2Storage(backend_context).create_disk(launch.disk, 64 << 20)
    launch.console_log.write_text("the last boot's console\n")
    launch.console_log.chmod(0o644)
    backend = QemuHypervisor(backend_context)
    runtime = backend.start(launch)
    try:
        wait_for_text(launch.console_log, test_guest.marker, timeout=60)
        assert launch.console_log.stat().st_mode & 0o777 == 0o600
        assert "the last boot" not in launch.console_log.read_text()
        os.truncate(launch.console_log, 0)  # what a rotation does after copying
        backend.stop(runtime, vm_dir, timeout=30)  # the guest prints as it powers off
        rotated = launch.console_log.read_bytes()
        assert POWEROFF_MARKER.encode() in rotated and not rotated.startswith(b"\0")
    finally:
        backend.stop(runtime, vm_dir, timeout=1)
        backend.cleanup(vm_dir)
