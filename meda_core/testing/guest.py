"""A tiny real guest for tests and demos: Debian's cloud kernel and a busybox initramfs.

The kernel comes from Debian's ``linux-image-cloud-amd64`` (fetched with ``apt-get
download``), busybox from ``busybox-static``. The guest prints :data:`BOOT_MARKER` on
its serial console once init runs and powers off on an ACPI power-button press, so
tests can prove a boot and a graceful stop. Built once and cached.

    python -m meda_core.testing.guest [--cache DIR] [--import NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from meda_core.backends.context import backend_context
from meda_core.backends.manager import PluginManager
from meda_core.backends.roles import AGENT_PORT_NAME, AgentBackend, Role
from meda_core.backends.selection import BackendSelector
from meda_core.errors import MedaError
from meda_core.host.private import DIR_MODE
from meda_core.settings import Settings
from meda_core.state.store import StateStore
from meda_core.testing import cpio

BOOT_MARKER = "MEDA-GUEST-BOOTED"
POWEROFF_MARKER = "MEDA-GUEST-POWEROFF"
CMDLINE = "console=ttyS0 panic=-1 quiet"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
#: Loaded in this order (each after what its ``depends=`` names): the power button, then
#: virtio-pci, the guest agent's channels (virtio-serial and the vsock transport),
#: virtio-net, virtio-blk and the CD-ROM (virtio-scsi) that holds the seed.
MODULES = (
    "drivers/input/evdev.ko",
    "drivers/acpi/button.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/char/virtio_console.ko",
    "net/vmw_vsock/vsock.ko",
    "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
    "net/vmw_vsock/vmw_vsock_virtio_transport.ko",
    "drivers/net/virtio_net.ko",
    "drivers/block/virtio_blk.ko",
    "drivers/scsi/scsi_common.ko",
    "drivers/scsi/scsi_mod.ko",
    "drivers/scsi/virtio_scsi.ko",
    "drivers/cdrom/cdrom.ko",
    "drivers/scsi/sr_mod.ko",
)
IP_MARKER = "MEDA-GUEST-IP="
HOSTNAME_MARKER = "MEDA-GUEST-HOSTNAME="
HTTP_PAGE = "MEDA-GUEST-HTTP"
COUNTER_MARKER = "meda-counter "
#: Printed with the device's name (``vport1p1``) once the agent's port is found by name.
AGENT_PORT_MARKER = "MEDA-GUEST-AGENT-PORT="
#: Printed with its exit status the first time the guest agent ends (it should serve until
#: power-off; init starts it again a second later).
AGENT_EXIT_MARKER = "MEDA-GUEST-AGENT-EXITED="
#: Where the guest agent's program is in the initramfs.
AGENT_PATH = "bin/meda-agent"

DHCP_EVENT = f"""#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route add default via "${{router%% *}}" dev "$interface"
    echo "{IP_MARKER}$ip" > /dev/console ;;
esac
"""

#: The hostname in the seed CD's meta-data becomes the guest's: at boot, and whenever the
#: medium changes (a clone restored from its template's memory gets its own seed).
SEED_EVENT = f"""#!/bin/sh
[ -n "${{ACTION:-}}" ] && [ "${{DISK_MEDIA_CHANGE:-}}" != 1 ] && exit 0
blockdev --flushbufs /dev/sr0 2>/dev/null
name=$(dd if=/dev/sr0 bs=2048 count=256 2>/dev/null | strings \\
       | sed -n 's/^local-hostname: *//p' | head -n 1)
[ -n "$name" ] || exit 0
hostname "$name" || exit 1
echo "{HOSTNAME_MARKER}$name" > /dev/console
"""

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/order); do insmod "/lib/modules/$m"; done
# The kernel polls CD-ROMs for media changes (as udev has it do) and reports them.
echo 2000 > /sys/module/block/parameters/events_dfl_poll_msecs
uevent /bin/seed-event >/dev/null 2>&1 &
/bin/seed-event
# The guest agent, after the seed's hostname (an agent that answers is a readiness signal: a
# template snapshotted then must not set its own name later, over a clone's) and before the
# network (exec works in a guest whose network is down); it finds its channel itself, and is
# started again if it ends (as systemd's Restart=always), its first exit said on the
# console. Its port, by the name the host gives it, is shown.
if [ -x /{AGENT_PATH} ]; then
  (while true; do /{AGENT_PATH} >/dev/null 2>&1; status=$?
     [ -n "${{said:-}}" ] || echo "{AGENT_EXIT_MARKER}$status"; said=1; sleep 1; done) &
fi
(for i in $(seq 50); do
   for port in /sys/class/virtio-ports/*; do
     [ "$(cat "$port/name" 2>/dev/null)" = {AGENT_PORT_NAME} ] \\
       && echo "{AGENT_PORT_MARKER}${{port##*/}}" && exit 0
   done
   sleep 0.1
 done) &
# Network, in the background: an HTTP server on port 80 and an address by DHCP.
if [ -e /sys/class/net/eth0 ]; then
  mkdir -p /www && echo {HTTP_PAGE} > /www/index.html
  # State that lives only in memory: a token drawn at boot and a counter that ticks on,
  # also written to the first disk (snapshot and clone tests read both).
  head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n' > /www/token
  (i=0; while true; do i=$((i+1)); echo $i > /www/counter
     [ -b /dev/vda ] && echo "{COUNTER_MARKER}$i" | dd of=/dev/vda conv=notrunc 2>/dev/null
     sleep 1; done) &
  ip link set lo up
  ip link set eth0 up
  httpd -p 80 -h /www
  (udhcpc -i eth0 -s /bin/dhcp-event -q -n -t 30 -T 1 >/dev/null 2>&1 \\
     || echo MEDA-GUEST-DHCP-FAILED > /dev/console) &
fi
# Power off when the ACPI power button (QMP system_powerdown) is pressed. The device is
# opened before the marker is printed, so no press after the marker can be missed.
for ev in /sys/class/input/event*; do
  if grep -q "Power Button" "$ev/device/name" 2>/dev/null; then
    exec 3<"/dev/input/${{ev##*/}}"
    (head -c 24 <&3 >/dev/null; echo {POWEROFF_MARKER}; poweroff -f) &
  fi
done
echo {BOOT_MARKER}
while true; do sleep 3600; done
"""


# A kernel message (timestamped) may land in the middle of a line a guest program wrote.
_KERNEL_LINE = re.compile(r"\[\s*\d+\.\d+\][^\n]*\n?")
_GUEST_IP = re.compile(re.escape(IP_MARKER) + r"(\d+\.\d+\.\d+\.\d+)")


def guest_output(console: str) -> str:
    """What the guest's programs wrote to the console, kernel messages taken out."""
    return _KERNEL_LINE.sub("", console)


def guest_ip(console: str) -> str | None:
    """The address the guest reported after DHCP, if it has."""
    match = _GUEST_IP.search(guest_output(console))
    return match.group(1) if match else None


@dataclass(frozen=True)
class BootableGuest:
    kernel: Path
    initrd: Path
    cmdline: str = CMDLINE
    marker: str = BOOT_MARKER
    #: True if a guest agent starts at boot (one was installed when it was built).
    agent: bool = False


class GuestBuildError(RuntimeError):
    """The test guest could not be built; the message says what to install."""


def _run(*argv: str, cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise GuestBuildError(f"'{argv[0]}' not found (a Debian host is needed)") from None
    if result.returncode != 0:
        raise GuestBuildError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def kernel_package() -> str:
    """The versioned kernel package the cloud meta-package points at."""
    for line in _run("apt-cache", "depends", KERNEL_META_PACKAGE).splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if name.startswith("linux-image-") and name != KERNEL_META_PACKAGE:
            return name
    raise GuestBuildError(f"apt knows no {KERNEL_META_PACKAGE}: run 'apt-get update' first")


def _fetch_kernel(package: str, dest: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="meda-kernel-") as tmp:
        work = Path(tmp)
        _run("apt-get", "download", package, cwd=work)
        deb = next(work.glob("*.deb"))
        _run("dpkg-deb", "-x", str(deb), str(work / "root"))
        kernel = next((work / "root/boot").glob("vmlinuz-*"))
        modules = next((work / "root/lib/modules").iterdir()) / "kernel"
        staging = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "modules").mkdir(parents=True)
        shutil.copyfile(kernel, staging / "vmlinuz")
        for module in MODULES:
            shutil.copyfile(modules / module, staging / "modules" / Path(module).name)
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)


def static_busybox() -> Path:
    path = shutil.which("busybox") or "/bin/busybox"
    binary = Path(path)
    if not binary.exists():
        raise GuestBuildError("busybox not found: apt-get install busybox-static")
    if b"/lib64/ld-linux" in binary.read_bytes()[:4096]:
        raise GuestBuildError(f"{binary} is dynamically linked: apt-get install busybox-static")
    return binary


def installed_agent_program(home: Path) -> Path | None:
    """The guest program of the agent backend the installed plugins offer (as MEDA_AGENT
    selects it), built into ``home``'s cache; None, and why on stderr, without one (or when
    it cannot be built here: the guest still serves every test that needs no agent)."""
    settings = Settings(home=home)
    home.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    plugins = PluginManager()
    plugins.load_entry_points(settings.disabled())
    store = StateStore(settings.db_path)
    try:
        selector = BackendSelector(plugins.registry, backend_context(settings, store))
        backend = selector.optional(Role.AGENT)
        program = None if backend is None else cast(AgentBackend, backend).guest_program()
    except MedaError as exc:
        print(f"test guest: no agent ({exc.message})", file=sys.stderr)
        return None
    finally:
        store.close()
    if program is None:
        print("test guest: no agent backend ships a guest program: built without", file=sys.stderr)
    return program


class _FromPlugins:
    """The default of :func:`build_test_guest`'s ``agent_program``."""


#: Ask the installed plugins for the agent's program (:func:`installed_agent_program`).
FROM_PLUGINS = _FromPlugins()


def _initramfs(dest: Path, busybox: Path, modules: Path, agent: Path | None) -> None:
    entries = [cpio.directory(d) for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules")]
    entries.append(cpio.file("bin/busybox", busybox, executable=True))
    if agent is not None:
        entries.append(cpio.file(AGENT_PATH, agent, executable=True))
    order = [Path(m).name for m in MODULES]
    entries += [cpio.file(f"lib/modules/{name}", modules / name) for name in order]
    entries.append(cpio.file("lib/modules/order", "\n".join(order).encode() + b"\n"))
    entries.append(cpio.file("bin/dhcp-event", DHCP_EVENT.encode(), executable=True))
    entries.append(cpio.file("bin/seed-event", SEED_EVENT.encode(), executable=True))
    entries.append(cpio.file("init", INIT.encode(), executable=True))
    cpio.write_initramfs(dest, entries)


def build_test_guest(
    cache_dir: Path, agent_program: Path | _FromPlugins | None = FROM_PLUGINS
) -> BootableGuest:
    """The test guest's kernel and initramfs, built into ``cache_dir`` on first use.

    ``agent_program``: a static executable started at boot as the guest agent; by default
    the installed agent backend's (None: a guest without an agent).
    """
    if isinstance(agent_program, _FromPlugins):
        agent_program = installed_agent_program(cache_dir / "agent-home")
    package = kernel_package()
    modules_key = hashlib.sha256("\n".join(MODULES).encode()).hexdigest()[:8]
    kernel_dir = cache_dir / f"{package}-{modules_key}"
    if not (kernel_dir / "vmlinuz").exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        _fetch_kernel(package, kernel_dir)
    busybox = static_busybox()
    key = hashlib.sha256(
        INIT.encode()
        + DHCP_EVENT.encode()
        + SEED_EVENT.encode()
        + busybox.read_bytes()
        + kernel_dir.name.encode()
        + (b"agent:" + agent_program.read_bytes() if agent_program else b"")
    ).hexdigest()
    initrd = cache_dir / f"initrd-{key[:16]}.gz"
    if not initrd.exists():
        _initramfs(initrd, busybox, kernel_dir / "modules", agent_program)
    agent = agent_program is not None
    return BootableGuest(kernel=kernel_dir / "vmlinuz", initrd=initrd, agent=agent)


DISK_BOOT_MARKER = "MEDA-DISK-BOOTED"

# 16-bit boot sector: DS=0, print the marker on COM1 (port 0x3f8), halt forever.
_BOOT_CODE = bytes.fromhex(
    "fc31c08ed8"  # cld; xor ax,ax; mov ds,ax
    "be177c"  # mov si, 0x7c17 (the message below)
    "baf803"  # mov dx, 0x3f8
    "ac84c07403eeebf8"  # next: lodsb; test al,al; jz done; out dx,al; jmp next
    "faf4ebfc"  # done: cli; hlt; jmp done
)


def boot_sector_disk(dest: Path, size: int = 1024 * 1024) -> Path:
    """A raw disk whose MBR prints :data:`DISK_BOOT_MARKER` on the serial port.

    It proves the firmware boot path (BIOS → disk) without any kernel.
    """
    message = (DISK_BOOT_MARKER + "\r\n").encode() + b"\0"
    sector = (_BOOT_CODE + message).ljust(510, b"\0") + b"\x55\xaa"
    with dest.open("wb") as disk:
        disk.write(sector)
        disk.truncate(size)
    return dest


def default_cache() -> Path:
    return Path.home() / ".cache" / "meda" / "test-guest"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build meda's test guest")
    parser.add_argument("--cache", type=Path, default=default_cache())
    parser.add_argument(
        "--import",
        dest="import_as",
        metavar="NAME[:TAG]",
        help="also import it into meda's image store under this name",
    )
    args = parser.parse_args(argv)
    try:
        guest = build_test_guest(args.cache)
    except GuestBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.import_as:
        from meda_core.errors import ImageExists
        from meda_core.facade import Meda

        with contextlib.suppress(ImageExists):
            Meda().images.import_files(
                args.import_as, kernel=guest.kernel, initrd=guest.initrd, cmdline=guest.cmdline
            )
    print(json.dumps({k: str(v) for k, v in asdict(guest).items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
