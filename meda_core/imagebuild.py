"""``meda images build``: a Debian base image made offline-style from Debian's mirror.

mmdebstrap makes the root file system, a few files are set for cloud-init and for being
cloned many times (no host keys, no machine-id, no build host's hostname or resolver),
``mkfs.ext4 -d`` turns it into a disk without mounting anything, and the disk (as qcow2),
kernel and initrd go into the image store for direct kernel boot. The result is cached
by its inputs: a second build of the same inputs is instant.
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
from meda_core.images import ImageService
from meda_core.models import Image

BUILDER_VERSION = "2"
PACKAGES = (
    "linux-image-cloud-amd64", "systemd", "systemd-sysv", "udev", "cloud-init",
    "openssh-server", "sudo", "e2fsprogs", "locales", "ifupdown", "isc-dhcp-client",
    "netbase", "busybox", "ca-certificates",
    # ifupdown hands the name servers of a static network-config (dns-nameservers) to it.
    "resolvconf",
)  # fmt: skip
CMDLINE = "console=ttyS0 root=/dev/vda rw"
CLOUD_CFG = """\
# meda: NoCloud only, fast instance start, a root file system that fills its disk.
datasource_list: [NoCloud, None]
ssh_genkeytypes: [ed25519]
growpart: {mode: "off"}
resize_rootfs: true
locale: C.UTF-8
"""
Log = Callable[[str], None]


@dataclass(frozen=True)
class BuildSpec:
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    security: str | None = "http://deb.debian.org/debian-security"
    packages: tuple[str, ...] = field(default=PACKAGES)
    disk_headroom_mib: int = 512

    def key(self) -> str:
        text = json.dumps({**asdict(self), "builder": BUILDER_VERSION}, sort_keys=True)
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


def _size_mib(root: Path, headroom: int) -> int:
    used = sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    return used * 13 // 10 // (1024 * 1024) + headroom


def build(images: ImageService, ref: str, spec: BuildSpec, work: Path, log: Log) -> Image:
    """Build (or find in the cache) the image ``ref`` for ``spec``."""
    source = f"build:{spec.key()}"
    with contextlib.suppress(NotFound):
        image = images.get(ref)
        if image.source == source:
            log(f"{ref} is already built from these inputs")
            return image
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        root, raw, qcow2 = work / "root", work / "disk.raw", work / "disk.qcow2"
        _run(["mmdebstrap", "--variant=apt", f"--include={','.join(spec.packages)}",
              "--skip=check/empty", spec.suite, str(root), *_sources(spec)], log)  # fmt: skip
        _prepare(root)
        size = _size_mib(root, spec.disk_headroom_mib)
        _run(["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", str(root), str(raw), f"{size}M"], log)
        _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], log)
        kernel = next((root / "boot").glob("vmlinuz-*"))
        initrd = next((root / "boot").glob("initrd.img-*"))
        with contextlib.suppress(NotFound):
            images.remove(ref)  # an older build; refused (409) while a VM uses it
        image = images.import_files(ref, disk=qcow2, kernel=kernel, initrd=initrd,
                                    cmdline=CMDLINE, source=source)  # fmt: skip
        log(f"built {ref}: {size} MiB disk")
        return image
    finally:
        shutil.rmtree(work, ignore_errors=True)
