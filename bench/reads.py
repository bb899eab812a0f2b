#!/usr/bin/env python3
"""Reads at framework speed: ``GET /api/v1/vms`` on ``meda serve`` against a bare FastAPI app.

In a temporary MEDA_HOME (the qemu, qcow2 and user-network plugins; a kernel-only image), it
starts ``meda serve`` in its default mode (loopback, no TLS, no token, the default
middleware), creates ``--vms`` VMs through ``POST /api/v1/vms`` (timing each: the create
row) and forwards a port on a few of them; the VMs are not started. It then serves meda's
own list answer from bench/yardstick_app.py (one synchronous GET route, the same uvicorn and
settings, one worker) and loads both with ``wrk -t2 -c16 --latency``, alternating, for
``--rounds`` rounds. Writes JSON (default bench/results/reads.json).

    .venv/bin/python bench/reads.py [--quick] [--seconds 10] [--rounds 2] [--vms 50]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from results_file import print_rows, row, write_result  # beside this script
from signals import unwind_on_sigterm

from meda_core.testing.host import free_port

HERE = Path(__file__).parent
PATH = "/api/v1/vms"
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass
class Load:
    """One wrk run: requests per second, p99 latency in ms, non-2xx answers."""

    rps: float
    p99_ms: float
    errors: int


def parse_wrk(output: str) -> Load:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors:.*", output)
    if socket_errors:
        print(f"  wrk: {socket_errors.group(0)}")
    return Load(rps, float(value) * _UNITS[unit], int(errors.group(1)) if errors else 0)


def wrk(url: str, seconds: float) -> Load:
    argv = ["wrk", "-t2", "-c16", f"-d{seconds:g}s", "--latency", url]
    return parse_wrk(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def wait_up(url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise SystemExit(f"server exited ({process.returncode}): see its log")
        try:
            httpx.get(url, timeout=5)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def make_home(folder: Path) -> dict[str, str]:
    """The server's environment, its MEDA_HOME holding the default (kernel-only) image."""
    env = {
        **os.environ,
        "MEDA_HOME": str(folder / "home"),
        "MEDA_HYPERVISOR": "qemu",
        "MEDA_STORAGE": "qcow2",
        "MEDA_NETWORK": "user",
        "MEDA_LOG_LEVEL": "warning",
    }
    kernel = folder / "vmlinuz"
    kernel.write_bytes(os.urandom(4096))  # never booted: the VMs stay stopped
    subprocess.run(
        [
            sys.executable,
            "-m",
            "meda_cli.main",
            "images",
            "import",
            "default",
            "--kernel",
            str(kernel),
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return env


def create_vms(base: str, count: int) -> list[float]:
    """Create ``count`` VMs, a port forwarded on every tenth; the creates' latencies (ms)."""
    latencies = []
    with httpx.Client(base_url=base, timeout=60) as http:
        for i in range(count):
            started = time.perf_counter()
            response = http.post("/api/v1/vms", json={"name": f"bench-{i:03d}"})
            latencies.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            if i % 10 == 0:
                forward = {"host_port": 20000 + i, "guest_port": 22}
                http.post(
                    f"/api/v1/vms/bench-{i:03d}/port-forward", json=forward
                ).raise_for_status()
    return latencies


def serve(argv: list[str], env: dict[str, str], log: Path, url: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    wait_up(url, process)
    return process


def measure(meda_url: str, yard_url: str, seconds: float, rounds: int) -> dict[str, list[Load]]:
    wrk(meda_url, 1)  # warm both up (imports, first connections)
    wrk(yard_url, 1)
    loads: dict[str, list[Load]] = {"meda": [], "yardstick": []}
    for _ in range(rounds):
        for who, url in (("yardstick", yard_url), ("meda", meda_url)):
            load = wrk(url, seconds)
            print(f"  {who:9}  {load.rps:8.1f} req/s  p99 {load.p99_ms:7.1f} ms")
            loads[who].append(load)
    return loads


def rows(loads: dict[str, list[Load]], creates: list[float]) -> list[dict[str, Any]]:
    meda_rps = statistics.median(x.rps for x in loads["meda"])
    yard_rps = statistics.median(x.rps for x in loads["yardstick"])
    meda_p99 = statistics.median(x.p99_ms for x in loads["meda"])
    yard_p99 = statistics.median(x.p99_ms for x in loads["yardstick"])
    create_p50 = statistics.median(creates)
    return [
        row(
            "GET /api/v1/vms req/s",
            meda_rps,
            yard_rps,
            "req/s",
            ">= 0.5x",
            meda_rps >= 0.5 * yard_rps,
        ),
        row(
            "GET /api/v1/vms p99",
            meda_p99,
            yard_p99,
            "ms",
            "<= 4x + 5 ms",
            meda_p99 <= 4 * yard_p99 + 5,
        ),
        row("POST /vms create p50", create_p50, None, "ms", "<= 100 ms", create_p50 <= 100),
    ]


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    env = make_home(folder)
    meda_port, yard_port = free_port(), free_port()
    meda_base = f"http://127.0.0.1:{meda_port}"
    meda_argv = [sys.executable, "-m", "meda_cli.main", "serve", "--port", str(meda_port)]
    meda = serve(meda_argv, env, folder / "meda.log", meda_base + "/api/v1/health")
    yard = None
    try:
        creates = create_vms(meda_base, args.vms)
        body = httpx.get(meda_base + PATH).raise_for_status().text
        (folder / "body.json").write_text(body)
        yard_argv = [sys.executable, str(HERE / "yardstick_app.py"), "--port", str(yard_port)]
        yard_argv += ["--body", str(folder / "body.json")]
        yard_base = f"http://127.0.0.1:{yard_port}"
        yard = serve(yard_argv, env, folder / "yardstick.log", yard_base + PATH)
        loads = measure(meda_base + PATH, yard_base + PATH, args.seconds, args.rounds)
    finally:
        for process in (yard, meda):
            if process is not None:
                stop(process)
    errors = sum(x.errors for x in loads["meda"] + loads["yardstick"])
    return {
        "bench": "reads",
        "quick": args.quick,
        "vms": args.vms,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "wrk": "-t2 -c16 --latency",
        "backends": "qemu, qcow2, user network (VMs created, not started)",
        "non_2xx": errors,
        "rows": rows(loads, creates),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s runs, 10 VMs, 1 round")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--json", type=Path, default=HERE / "results/reads.json")
    args = parser.parse_args()
    unwind_on_sigterm()
    if args.quick:
        args.seconds, args.rounds, args.vms = 2, 1, 10
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="meda-reads-"))
    try:
        result = run(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print_rows(result["rows"])
    write_result(args.json, result)
    return 0 if result["non_2xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
