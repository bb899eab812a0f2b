"""Choosing the accelerator: KVM only if it really boots a guest kernel, else TCG."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from meda_core.plugin import atomic_file
from meda_core.plugin import processes as procs
from meda_qemu.argv import SANDBOX, path_opt

# What a kernel prints early on the serial console: proof that the vCPU ran it.
_BOOT_SIGNS = ("Linux version", "Kernel panic", "Booting the kernel")


@dataclass(frozen=True)
class AccelChoice:
    accel: str
    reason: str


def _cache_key(binary: str) -> str:
    return f"{procs.boot_id()}:{binary}"


def _read_cache(cache: Path, key: str) -> AccelChoice | None:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != key:
        return None
    return AccelChoice(data["accel"], data["reason"])


def _write_cache(cache: Path, key: str, choice: AccelChoice) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(cache) as tmp:
        tmp.write_text(json.dumps({"key": key, **asdict(choice)}))


def kvm_device_problem() -> str | None:
    """Why /dev/kvm cannot be used at all, or None if it can be opened."""
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user"
    return None


def boot_test(binary: str, kernel: Path, timeout: float) -> str | None:
    """Boot ``kernel`` under KVM until it prints; None if it did, else what went wrong."""
    with tempfile.TemporaryDirectory(prefix="meda-kvm-probe-") as tmp:
        serial, errors = Path(tmp) / "serial.log", Path(tmp) / "stderr.log"
        argv = [
            binary,
            "-machine",
            "q35",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-sandbox",
            SANDBOX,
            "-chardev",
            f"file,id=serial,path={path_opt(serial)}",
            "-serial",
            "chardev:serial",
            "-kernel",
            str(kernel),
            "-append",
            "console=ttyS0 panic=-1 earlyprintk=serial,ttyS0",
        ]
        with errors.open("wb") as stderr:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        try:
            return _watch_boot(proc, serial, errors, timeout)
        finally:
            proc.kill()
            proc.wait()


def _watch_boot(
    proc: subprocess.Popen[bytes], serial: Path, errors: Path, timeout: float
) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(sign in _read(serial) for sign in _BOOT_SIGNS):
            return None
        err = _read(errors)
        if "KVM internal error" in err:
            return "KVM internal error: this KVM cannot run a stock guest kernel"
        if proc.poll() is not None:
            return f"QEMU exited ({proc.returncode}) before the kernel ran: {err.strip()}"
        time.sleep(0.05)
    return "the guest kernel printed nothing under KVM within the probe's timeout"


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def choose(binary: str, kernel: Path | None, cache: Path, timeout: float) -> AccelChoice:
    """KVM if a guest kernel boots under it (result cached per host boot), else TCG."""
    problem = kvm_device_problem()
    if problem:
        return AccelChoice("tcg", f"KVM unusable: {problem}")
    key = _cache_key(binary)
    cached = _read_cache(cache, key)
    if cached is not None:
        return cached
    if kernel is None:
        # Nothing to boot-test with: do not cache, a later start with a kernel will probe.
        return AccelChoice("tcg", "KVM not verified: no kernel to boot-test it with")
    failure = boot_test(binary, kernel, timeout)
    if failure is None:
        choice = AccelChoice("kvm", "KVM boot test passed")
    else:
        choice = AccelChoice("tcg", f"KVM boot test failed: {failure}")
    _write_cache(cache, key, choice)
    return choice
