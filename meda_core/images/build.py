"""``meda images build``: a Debian base image made offline-style from Debian's mirror.

mmdebstrap makes the root file system, a few files are set for cloud-init and for being
cloned many times (no host keys, no machine-id, no build host's hostname or resolver),
``mkfs.ext4 -d`` turns it into a disk without mounting anything, and the disk (in the
storage backend's format), kernel and initrd go into the image store for direct kernel
boot. The guest agent of the selected agent backend is installed and enabled, where there
is one. The result is cached by its inputs (the agent's program among them): a second
build of the same inputs is instant.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from meda_core.errors import BackendError, BackendUnavailable, NotFound
from meda_core.images.blobs import sha256_file
from meda_core.images.service import ImageService
from meda_core.models import Image

BUILDER_VERSION = "4"
#: ``dbus``: systemd-logind, which powers the guest off on the ACPI power button (a stop),
#: cannot start without the system bus; it is only a Recommends of systemd.
PACKAGES = (
    "linux-image-cloud-amd64",
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "cloud-init",
    "openssh-server",
    "sudo",
    "e2fsprogs",
    "locales",
    "ifupdown",
    "isc-dhcp-client",
    "netbase",
    "busybox",
    "ca-certificates",
    # ifupdown hands the name servers of a static network-config (dns-nameservers) to it.
    "resolvconf",
)
CMDLINE = "console=ttyS0 root=/dev/vda rw"
#: Its guest runs sshd: runs of the image wait for its banner to build warm templates.
READY_PORT = 22
CLOUD_CFG = """\
# meda: NoCloud only, fast instance start, a root file system that fills its disk.
datasource_list: [NoCloud, None]
ssh_genkeytypes: [ed25519]
growpart: {mode: "off"}
resize_rootfs: true
locale: C.UTF-8
"""
#: A clone is restored from its template's memory, so cloud-init does not run again: its
#: seed CD's medium changes instead (the QEMU plugin), and this applies its hostname.
SEED_RULE = """\
# meda: a seed CD-ROM whose medium changed (a clone restored from its template).
ACTION=="change", SUBSYSTEM=="block", KERNEL=="sr[0-9]*", ENV{DISK_MEDIA_CHANGE}=="1", \\
  RUN+="/bin/systemctl --no-block start meda-seed-hostname.service"
"""
SEED_SERVICE = """\
[Unit]
Description=Take the hostname of meda's seed (a clone's is its own)

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/meda-seed-hostname
"""
SEED_SCRIPT = """\
#!/bin/sh
# meda: set the hostname from the local-hostname of the NoCloud seed's meta-data.
set -u
dir=$(mktemp -d)
trap 'umount "$dir" 2>/dev/null; rmdir "$dir"' EXIT
name=
for dev in /dev/sr*; do
  mount -t iso9660 -o ro "$dev" "$dir" 2>/dev/null || continue
  name=$(sed -n 's/^local-hostname: *//p' "$dir/meta-data" 2>/dev/null | head -n 1)
  umount "$dir"
  [ -n "$name" ] && break
done
case "$name" in ""|*[!A-Za-z0-9.-]*) exit 0 ;; esac
[ "$(cat /proc/sys/kernel/hostname)" = "$name" ] && exit 0
echo "$name" > /proc/sys/kernel/hostname
echo "$name" > /etc/hostname
if grep -q '^127\\.0\\.1\\.1[[:space:]]' /etc/hosts; then
  sed -i "s/^127\\.0\\.1\\.1[[:space:]].*/127.0.1.1 $name/" /etc/hosts
else
  echo "127.0.1.1 $name" >> /etc/hosts
fi
echo "meda: hostname $name" > /dev/console
"""
#: The guest agent: started early (before the network: exec works without it), after udev
#: has loaded the drivers of its channel (virtio-serial or vsock), which it finds itself,
#: and after cloud-init's local stage has set the seed's hostname: an agent that answers is
#: a readiness signal, and a template snapshotted then must not name itself later, over the
#: identity its clones are given.
AGENT_PROGRAM = "usr/local/sbin/meda-agent"
AGENT_UNIT = "meda-agent.service"
AGENT_SERVICE = f"""\
[Unit]
Description=meda guest agent: exec and files from the host, without SSH or a network
DefaultDependencies=no
After=systemd-udev-trigger.service systemd-modules-load.service cloud-init-local.service
Before=sysinit.target

[Service]
ExecStart=/{AGENT_PROGRAM}
Restart=always
RestartSec=1

[Install]
WantedBy=sysinit.target
"""
NO_AGENT = (
    "no guest agent in this image: no agent backend ships a guest program "
    "(exec, files and agent readiness need one)"
)
Log = Callable[[str], None]


@dataclass(frozen=True)
class BuildSpec:
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    security: str | None = "http://deb.debian.org/debian-security"
    packages: tuple[str, ...] = field(default=PACKAGES)
    disk_headroom_mib: int = 512

    def key(self, agent: str | None = None) -> str:
        """The inputs' digest; ``agent``: the sha256 of the agent program it ships."""
        inputs = {**asdict(self), "builder": BUILDER_VERSION, "agent": agent}
        text = json.dumps(inputs, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run(argv: list[str], log: Log) -> None:
    log(f"$ {' '.join(argv[:3])} …")
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BackendUnavailable(f"{argv[0]} not found (apt-get install {argv[0]})") from None
    if result.returncode != 0:
        raise BackendError(f"{argv[0]} failed: {result.stderr.strip()[-2000:]}")


def _sources(spec: BuildSpec) -> list[str]:
    sources = [f"deb {spec.mirror} {spec.suite} main"]
    if spec.security:
        sources.append(f"deb {spec.security} {spec.suite}-security main")
    return sources


def _prepare(root: Path) -> None:
    """Make the tree fit to be cloned: per-instance identity is cloud-init's job."""
    for leftover in ("etc/hostname", "etc/resolv.conf", "var/lib/dbus/machine-id"):
        (root / leftover).unlink(missing_ok=True)
    if (root / "etc/resolvconf").is_dir():  # the instance's servers, as resolvconf has them
        (root / "etc/resolv.conf").symlink_to("../run/resolvconf/resolv.conf")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "etc/fstab").write_text("/dev/vda / ext4 defaults,errors=remount-ro 0 1\n")
    (root / "etc/cloud/cloud.cfg.d/90-meda.cfg").write_text(CLOUD_CFG)
    (root / "etc/udev/rules.d/90-meda-seed.rules").write_text(SEED_RULE)
    (root / "etc/systemd/system/meda-seed-hostname.service").write_text(SEED_SERVICE)
    script = root / "usr/local/sbin/meda-seed-hostname"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(SEED_SCRIPT)
    script.chmod(0o755)


def install_agent(root: Path, program: Path) -> None:
    """Put the agent ``program`` into ``root`` and enable its unit (the symlink that
    ``systemctl enable`` would make: no systemctl runs in the tree)."""
    dest = root / AGENT_PROGRAM
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(program, dest)
    dest.chmod(0o755)
    units = root / "etc/systemd/system"
    wants = units / "sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (units / AGENT_UNIT).write_text(AGENT_SERVICE)
    (units / AGENT_UNIT).chmod(0o644)
    (wants / AGENT_UNIT).unlink(missing_ok=True)
    (wants / AGENT_UNIT).symlink_to(f"/etc/systemd/system/{AGENT_UNIT}")


def agent_program(images: ImageService, log: Log) -> Path | None:
    """The selected agent backend's guest program; None (said in the log) without one."""
    try:
        program = images.agent_program()
    except BackendUnavailable as exc:
        log(f"{NO_AGENT}: {exc.message}")
        return None
    if program is None:
        log(NO_AGENT)
    return program


def _size_mib(root: Path, headroom: int) -> int:
    used = sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    return used * 13 // 10 // (1024 * 1024) + headroom


def _root_tree(spec: BuildSpec, root: Path, log: Log) -> None:
    """The guest's root file system in ``root``, fit to be cloned."""
    _run(
        [
            "mmdebstrap",
            "--variant=apt",
            f"--include={','.join(spec.packages)}",
            "--skip=check/empty",
            spec.suite,
            str(root),
            *_sources(spec),
        ],
        log,
    )
    _prepare(root)


def _disk(
    images: ImageService, spec: BuildSpec, root: Path, work: Path, log: Log
) -> tuple[Path, int]:
    """``root`` as one ext4 file system on a disk in the storage backend's format, and
    the disk's size in MiB."""
    raw = work / "fs.raw"
    size = _size_mib(root, spec.disk_headroom_mib)
    _run(["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", str(root), str(raw), f"{size}M"], log)
    return images.flatten_disk(raw, work), size


def _cached(images: ImageService, ref: str, source: str, log: Log) -> Image | None:
    """The image ``ref`` if it was built from the same inputs (``source``)."""
    with contextlib.suppress(NotFound):
        image = images.get(ref)
        if image.source == source:
            log(f"{ref} is already built from these inputs")
            return image
    return None


def build(images: ImageService, ref: str, spec: BuildSpec, work: Path, log: Log) -> Image:
    """Build (or find in the cache) the image ``ref`` for ``spec``."""
    agent = agent_program(images, log)
    source = f"build:{spec.key(sha256_file(agent) if agent else None)}"
    cached = _cached(images, ref, source, log)
    if cached is not None:
        return cached
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        root = work / "root"
        _root_tree(spec, root, log)
        if agent is not None:
            install_agent(root, agent)
            log(f"guest agent installed: /{AGENT_PROGRAM}, {AGENT_UNIT} enabled")
        disk, size = _disk(images, spec, root, work, log)
        kernel = next((root / "boot").glob("vmlinuz-*"))
        initrd = next((root / "boot").glob("initrd.img-*"))
        with contextlib.suppress(NotFound):
            images.remove(ref)  # an older build; refused (409) while a VM uses it
        image = images.import_files(
            ref,
            disk=disk,
            kernel=kernel,
            initrd=initrd,
            cmdline=CMDLINE,
            source=source,
            ready_port=READY_PORT,
        )
        log(f"built {ref}: {size} MiB disk")
        return image
    finally:
        shutil.rmtree(work, ignore_errors=True)
