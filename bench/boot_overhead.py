#!/usr/bin/env python3
"""Boot overhead of meda: ``POST /start`` to the guest's init marker, vs raw QEMU.

Each round boots the test guest twice, in alternating order: once through a running
``meda serve`` and once as a bare ``qemu-system-x86_64`` with the very arguments the
qemu plugin uses. Prints the medians, their ratio and the milliseconds meda adds, and
writes JSON (default bench/results/boot_overhead.json).

    .venv/bin/python bench/boot_overhead.py [--rounds 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from results_file import write_result  # beside this script

from meda_core.backends.roles import LaunchSpec
from meda_core.facade import Meda
from meda_core.models import VMSpec
from meda_core.settings import Settings
from meda_core.testing.guest import BOOT_MARKER, build_test_guest, default_cache
from meda_core.testing.host import free_port
from meda_qemu.argv import build_argv

SPEC = VMSpec(memory="512M", cpus=1, disk="1G")


def wait_marker(path: Path, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if BOOT_MARKER in path.read_text(errors="replace"):
                return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"no boot marker in {path}")


def boot_via_meda(api: httpx.Client, name: str) -> tuple[float, float, str]:
    """(start call returned, init marker seen) in seconds after POST /start, accelerator."""
    assert api.post("/vms", json={"name": name, **SPEC.model_dump()}).status_code == 201
    started = time.monotonic()
    response = api.post(f"/vms/{name}/start")
    returned = time.monotonic()
    assert response.status_code == 200, response.text
    details = response.json()["vm"]["details"]
    booted = wait_marker(Path(details["console_log"]))
    assert api.delete(f"/vms/{name}").status_code == 200
    return returned - started, booted - started, details["accelerator"]


def boot_raw(
    work: Path, guest_kernel: Path, initrd: Path, cmdline: str, accel: str
) -> tuple[float, float]:
    """(qemu -daemonize returned, init marker seen) in seconds after it was run."""
    vm_dir = work / f"raw-{uuid.uuid4().hex[:8]}"
    vm_dir.mkdir()
    disk = vm_dir / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1G"], check=True)
    launch = LaunchSpec(
        name=vm_dir.name,
        uuid=str(uuid.uuid4()),
        vm_dir=vm_dir,
        spec=SPEC,
        disk=disk,
        disk_format="qcow2",
        console_log=vm_dir / "console.log",
        kernel=guest_kernel,
        initrd=initrd,
        cmdline=cmdline,
    )
    argv = build_argv("qemu-system-x86_64", launch, accel, "q35", None)
    started = time.monotonic()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    returned = time.monotonic()
    booted = wait_marker(launch.console_log)
    pid = int((vm_dir / "qemu.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}").exists():
        time.sleep(0.01)
    return returned - started, booted - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("bench/results/boot_overhead.json"))
    args = parser.parse_args()

    guest = build_test_guest(default_cache())
    with tempfile.TemporaryDirectory(prefix="meda-bench-") as tmp:
        work = Path(tmp)
        home = work / "home"
        Meda(Settings(home=home)).images.import_files(
            "bench", kernel=guest.kernel, initrd=guest.initrd, cmdline=guest.cmdline
        )
        port = free_port()
        env = {**os.environ, "MEDA_HOME": str(home), "MEDA_DEFAULT_IMAGE": "bench"}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meda_cli.main",
                "serve",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
        )
        try:
            api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=120)
            for _ in range(300):
                try:
                    api.get("/health")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            # Warm-up: the first start runs the KVM probe (cached per host boot).
            _, _, accel = boot_via_meda(api, "warmup")
            meda_times, raw_times, meda_calls, raw_calls = [], [], [], []
            for round_ in range(args.rounds):
                order = ["meda", "raw"] if round_ % 2 == 0 else ["raw", "meda"]
                for kind in order:
                    if kind == "meda":
                        call, boot, _ = boot_via_meda(api, f"bench-{round_}")
                        meda_calls.append(call)
                        meda_times.append(boot)
                    else:
                        call, boot = boot_raw(
                            work, guest.kernel, guest.initrd, guest.cmdline, accel
                        )
                        raw_calls.append(call)
                        raw_times.append(boot)
                print(f"round {round_ + 1}: meda {meda_times[-1]:.3f}s  raw {raw_times[-1]:.3f}s")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)

    meda_median, raw_median = statistics.median(meda_times), statistics.median(raw_times)
    result = {
        "benchmark": "boot_overhead",
        "accelerator": accel,
        "rounds": args.rounds,
        "meda_seconds": meda_times,
        "raw_seconds": raw_times,
        "meda_median_s": round(meda_median, 4),
        "raw_median_s": round(raw_median, 4),
        "ratio": round(meda_median / raw_median, 4),
        "added_ms": round((meda_median - raw_median) * 1000, 1),
        # Launch latency alone (POST /start vs qemu -daemonize returning): the part of the
        # overhead that is meda's, without the guest's boot-time noise.
        "meda_start_call_median_ms": round(statistics.median(meda_calls) * 1000, 1),
        "raw_launch_median_ms": round(statistics.median(raw_calls) * 1000, 1),
        "start_call_added_ms": round(
            (statistics.median(meda_calls) - statistics.median(raw_calls)) * 1000, 1
        ),
        "target": {"ratio_max": 1.10, "added_ms_max": 150},
    }
    result["within_target"] = result["ratio"] <= 1.10 and result["added_ms"] <= 150
    print(
        f"accelerator {accel}: meda median {meda_median:.3f}s, raw median {raw_median:.3f}s, "
        f"ratio {result['ratio']:.3f}x, added {result['added_ms']:.0f} ms"
    )
    print(
        f"launch alone: POST /start {result['meda_start_call_median_ms']:.0f} ms vs "
        f"qemu -daemonize {result['raw_launch_median_ms']:.0f} ms "
        f"(meda adds {result['start_call_added_ms']:.0f} ms)"
    )
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
