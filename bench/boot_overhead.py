#!/usr/bin/env python3
"""Boot overhead of meda: ``POST /vms/{name}/start`` to the guest's first console line,
vs raw ``qemu-system-x86_64`` run with the same argv.

Each round boots the test guest through a running ``meda serve`` (the VM created
beforehand, as a user does) and as a bare QEMU whose argv is the qemu plugin's own
(``build_argv``: same machine, sandbox, ``-runas``, seed CD-ROM, serial console written to
a file, NIC), in alternating order. The time is from sending the request (or running QEMU)
to the first newline in the serial log.

The guest boots without ``quiet``, so its first console line is the kernel's banner, as
when this row's goal was set (raw QEMU then: 1.7 s). The test guest's own command line
is quiet, and its first line is then init's, four to eight seconds in under TCG: that
wait is the guest's, not meda's, and its spread (several seconds between two boots of
the same argv) would drown the tenths of a second this bench is here to show. The rows
are judged on each round's pair (see ``rows_for``).

Two networks, each its own row:

- tap-bridge, meda's normal mode, in a network namespace the bench makes and deletes
  (MEDA_NETNS, MEDA_NETNS_UPLINK=0): meda's start includes the tap, nftables and dnsmasq
  work. A stopped VM holds a lease meanwhile, so the bridge stays up between rounds as on
  a host that runs VMs. Raw QEMU gets a tap the bench made beforehand on the same bridge,
  in the same namespace, and is run there through the same ``nsenter`` prefix: a tap is
  what QEMU needs to exist before its exec, and making it is work meda does for the user.
- user (slirp), with ``--user-net`` on by default: no host network work at all.

    .venv/bin/python bench/boot_overhead.py [--rounds 12] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from results_file import print_rows, row, write_result  # beside this script
from signals import unwind_on_sigterm

from meda_core.backends.roles import LaunchSpec, NicKind, NicSpec
from meda_core.facade import Meda
from meda_core.models import VMSpec
from meda_core.settings import Settings
from meda_core.testing.guest import BootableGuest, build_test_guest, default_cache
from meda_core.testing.host import free_port
from meda_core.vms import seed
from meda_qemu.argv import build_argv
from meda_qemu.settings import QemuSettings
from meda_tapbridge import links
from meda_tapbridge.settings import BridgeSettings

SPEC = VMSpec(memory="512M", cpus=1, disk="1G")
RATIO_GOAL, ADDED_GOAL_MS = 1.10, 150.0
RAW_TAP = "mbraw0"
RAW_MAC = "52:54:00:be:ec:01"


def loud(guest: BootableGuest) -> BootableGuest:
    """The guest with the kernel's messages on its console (see above)."""
    cmdline = " ".join(word for word in guest.cmdline.split() if word != "quiet")
    return dataclasses.replace(guest, cmdline=cmdline)


def wait_first_line(path: Path, timeout: float = 120) -> float:
    """When the serial log first holds a whole line (monotonic seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with path.open("rb") as log:
                if b"\n" in log.read(65536):
                    return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    raise TimeoutError(f"no console line in {path}")


@dataclass
class Server:
    """One ``meda serve`` and what it was started with."""

    home: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    api: httpx.Client
    accel: str = "tcg"


@contextlib.contextmanager
def meda_server(home: Path, image: BootableGuest, env: dict[str, str]) -> Iterator[Server]:
    Meda(Settings(home=home)).images.import_files(
        "bench", kernel=image.kernel, initrd=image.initrd, cmdline=image.cmdline
    )
    port = free_port()
    env = {**os.environ, **env, "MEDA_HOME": str(home), "MEDA_DEFAULT_IMAGE": "bench"}
    argv = [sys.executable, "-m", "meda_cli.main", "serve", "--port", str(port)]
    process = subprocess.Popen([*argv, "--log-level", "warning"], env=env)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=120)
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                api.get("/health")
                break
            time.sleep(0.1)
        yield Server(home, env, process, api)
    finally:
        with contextlib.suppress(httpx.HTTPError):
            for vm in api.get("/vms").json()["vms"]:
                api.delete(f"/vms/{vm['name']}")
        process.send_signal(signal.SIGTERM)
        process.wait(30)


class Appears:
    """When a file first exists, watched from a thread (every millisecond) from now on:
    QEMU makes its monitor socket early in its start, so this times its exec without the
    guest's boot, which varies far more under TCG."""

    def __init__(self, path: Path, timeout: float = 120) -> None:
        self.path, self.deadline, self.at = path, time.monotonic() + timeout, float("nan")
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.path.exists() and time.monotonic() < self.deadline:
            time.sleep(0.001)
        self.at = time.monotonic()

    def wait(self) -> float:
        self.thread.join()
        return self.at


def create(server: Server, name: str) -> tuple[float, Path]:
    """Create ``name``; the seconds the call took, and the VM's folder."""
    started = time.monotonic()
    response = server.api.post("/vms", json={"name": name, **SPEC.model_dump()})
    assert response.status_code == 201, response.text
    return time.monotonic() - started, Path(response.json()["vm"]["details"]["vm_dir"])


def boot_via_meda(server: Server, name: str) -> dict[str, float]:
    """Create, then start and time: the start call, QEMU's monitor socket, the first
    console line after it."""
    created, vm_dir = create(server, name)
    monitor = Appears(vm_dir / "qmp.sock")
    started = time.monotonic()
    response = server.api.post(f"/vms/{name}/start")
    returned = time.monotonic()
    assert response.status_code == 200, response.text
    details = response.json()["vm"]["details"]
    server.accel = details["accelerator"]
    line = wait_first_line(Path(details["console_log"]))
    assert server.api.delete(f"/vms/{name}").status_code == 200
    return {
        "call": returned - started,
        "monitor": monitor.wait() - started,
        "line": line - started,
        "create": created,
    }


@dataclass
class RawGuest:
    """What a bare QEMU boots: the test guest, a seed ISO, the NIC meda would give it."""

    work: Path
    image: BootableGuest
    nic: NicSpec
    netns: str | None
    seed_iso: Path = field(init=False)

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.seed_iso = self.work / "seed.iso"
        seed.write_seed(self.seed_iso, {"meta-data": "instance-id: raw\n", "user-data": ""})

    def argv(self, vm_dir: Path, accel: str) -> list[str]:
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
            kernel=self.image.kernel,
            initrd=self.image.initrd,
            cmdline=self.image.cmdline,
            nics=(self.nic,),
            netns=self.netns,
            extra_disks=(self.seed_iso,),
        )
        config = QemuSettings()
        user = config.qemu_user()
        return build_argv(config.binary, launch, accel, config.machine, None, user)


def boot_raw(guest: RawGuest, accel: str) -> dict[str, float]:
    """Run QEMU and time: its monitor socket appearing, the first console line."""
    vm_dir = guest.work / f"raw-{uuid.uuid4().hex[:8]}"
    vm_dir.mkdir(mode=0o755)
    argv = guest.argv(vm_dir, accel)
    monitor = Appears(vm_dir / "qmp.sock")
    started = time.monotonic()
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        line = wait_first_line(vm_dir / "console.log")
    finally:
        process.kill()
        process.wait()
    return {"monitor": monitor.wait() - started, "line": line - started}


@contextlib.contextmanager
def bench_namespace() -> Iterator[str]:
    """A network namespace of the bench's own, deleted afterwards."""
    name = f"meda-bench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rows_for(label: str, meda: list[float], raw: list[float]) -> list[dict[str, Any]]:
    """The two rows of one network, judged on the rounds' pairs.

    A round boots both back to back, in alternating order, so the median over rounds of
    meda/raw and of meda - raw cancels what drifts between rounds. The median of each
    side is shown beside; their difference is noisier (a TCG boot's first line moves by
    hundreds of milliseconds between two boots of one argv) and is kept in the details.
    """
    pairs = list(zip(meda, raw, strict=True))
    ratio = med([m / r for m, r in pairs])
    added_ms = med([m - r for m, r in pairs]) * 1000
    apart_ms = round((med(meda) - med(raw)) * 1000, 1)
    return [
        row(
            f"API start -> first console line ({label}), median",
            med(meda),
            med(raw),
            "s",
            f"<= {RATIO_GOAL:.2f}x raw QEMU, same argv (median of the rounds' ratios)",
            ratio <= RATIO_GOAL,
            digits=4,
            ratio=round(ratio, 3),
        ),
        row(
            f"time meda adds before the first console line ({label})",
            added_ms,
            None,
            "ms",
            f"<= {ADDED_GOAL_MS:.0f} ms (median of the rounds' differences)",
            added_ms <= ADDED_GOAL_MS,
            difference_of_medians_ms=apart_ms,
        ),
    ]


@dataclass
class Series:
    """The samples of one network: meda's and raw QEMU's."""

    label: str
    server: Server
    raw: RawGuest
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, kind: str, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.samples.setdefault(f"{kind}_{key}", []).append(value)

    def round(self, number: int) -> str:
        order = ["meda", "raw"] if number % 2 == 0 else ["raw", "meda"]
        for kind in order:
            if kind == "meda":
                self.add("meda", boot_via_meda(self.server, f"bench-{number}"))
            else:
                self.add("raw", boot_raw(self.raw, self.server.accel))
        meda, raw = self.samples["meda_line"][-1], self.samples["raw_line"][-1]
        return f"{self.label}: meda {meda:.3f}s raw {raw:.3f}s"

    def details(self) -> dict[str, Any]:
        created = [
            c + s
            for c, s in zip(self.samples["meda_create"], self.samples["meda_line"], strict=True)
        ]
        return {
            "samples_s": {k: [round(v, 4) for v in vs] for k, vs in self.samples.items()},
            "start_call_median_ms": round(med(self.samples["meda_call"]) * 1000, 1),
            # Less noisy than the first line: what meda adds before QEMU runs.
            "monitor_socket_median_ms": {
                "meda": round(med(self.samples["meda_monitor"]) * 1000, 1),
                "raw": round(med(self.samples["raw_monitor"]) * 1000, 1),
            },
            "create_call_median_ms": round(med(self.samples["meda_create"]) * 1000, 1),
            "create_and_start_to_first_line_median_s": round(med(created), 4),
        }


def tap_series(stack: contextlib.ExitStack, work: Path, image: BootableGuest) -> Series:
    ns = stack.enter_context(bench_namespace())
    env = {"MEDA_NETWORK": "tap-bridge", "MEDA_NETNS": ns, "MEDA_NETNS_UPLINK": "0"}
    env["MEDA_NETNS_CREATE"] = "1"
    server = stack.enter_context(meda_server(work / "home-tap", image, env))
    create(server, "keeper")  # a stopped VM holds a lease: the bridge stays between rounds
    boot_via_meda(server, "warmup")  # the KVM probe, the bridge and dnsmasq come up once
    bridge = BridgeSettings().bridge
    links.add_tap(ns, RAW_TAP, bridge)
    nic = NicSpec(kind=NicKind.TAP, mac=RAW_MAC, tap=RAW_TAP)
    return Series("tap-bridge", server, RawGuest(work / "raw-tap", image, nic, ns))


def user_series(stack: contextlib.ExitStack, work: Path, image: BootableGuest) -> Series:
    server = stack.enter_context(meda_server(work / "home-user", image, {"MEDA_NETWORK": "user"}))
    boot_via_meda(server, "warmup")
    nic = NicSpec(kind=NicKind.USER, mac=RAW_MAC)
    return Series("user", server, RawGuest(work / "raw-user", image, nic, None))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="one round, tap-bridge only")
    parser.add_argument("--no-user-net", action="store_true", help="the tap-bridge row only")
    parser.add_argument("--json", type=Path, default=Path("bench/results/boot_overhead.json"))
    args = parser.parse_args()
    unwind_on_sigterm()
    rounds = 1 if args.quick else args.rounds

    image = loud(build_test_guest(default_cache()))
    with tempfile.TemporaryDirectory(prefix="meda-bench-") as tmp, contextlib.ExitStack() as stack:
        os.chmod(tmp, 0o755)  # QEMU may run as MEDA_QEMU_USER
        series = [tap_series(stack, Path(tmp), image)]
        if not (args.no_user_net or args.quick):  # a quick run shows the script works
            series.append(user_series(stack, Path(tmp), image))
        for number in range(rounds):
            print(f"round {number + 1}: " + "  ".join(s.round(number) for s in series))
        accel = series[0].server.accel
    rows = [
        row
        for s in series
        for row in rows_for(s.label, s.samples["meda_line"], s.samples["raw_line"])
    ]
    print(f"\naccelerator {accel}, {rounds} rounds")
    print_rows(rows)
    for s in series:
        details = s.details()
        call, both = (
            details["start_call_median_ms"],
            details["create_and_start_to_first_line_median_s"],
        )
        print(f"  {s.label}: POST /start answers in {call} ms; create+start to first line {both} s")
        monitor = details["monitor_socket_median_ms"]
        print(
            f"  {s.label}: QEMU's monitor socket after {monitor['meda']} ms vs {monitor['raw']} ms"
        )
    result = {
        "bench": "boot_overhead",
        "quick": args.quick,
        "rows": rows,
        "accelerator": accel,
        "rounds": rounds,
        "details": {s.label: s.details() for s in series},
    }
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
