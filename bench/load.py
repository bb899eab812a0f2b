#!/usr/bin/env python3
"""Load on a production-mode ``meda serve``: ``GET /api/v1/vms`` from concurrent clients.

Starts ``meda serve`` with TLS (a self-signed certificate made with openssl), a token and
the rate limit on, in a temporary MEDA_HOME, then keeps ``--clients`` connections busy for
``--seconds`` and reports requests per second, p50/p99 latency and errors. Writes JSON
(default bench/results/load.json).

    .venv/bin/python bench/load.py [--seconds 30] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from results_file import write_result  # beside this script

from meda_core.testing.host import free_port, self_signed_certificate


async def hammer(
    url: str, token: str, context: ssl.SSLContext, seconds: float, clients: int
) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {token}"}

    async def client() -> None:
        nonlocal errors
        async with httpx.AsyncClient(verify=context, headers=headers, timeout=30) as http:
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    response = await http.get(url)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.monotonic() - started)
                errors += not ok

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results/load.json")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="meda-load-"))
    cert, key = self_signed_certificate(folder)
    token, port = secrets.token_urlsafe(24), free_port()
    env = {
        **os.environ,
        "MEDA_HOME": str(folder / "home"),
        "MEDA_API_TOKEN": token,
        "MEDA_RATE_LIMIT": "5/20",
        "MEDA_LOG_LEVEL": "warning",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meda_cli.main",
            "serve",
            "--port",
            str(port),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(folder / "server.log").open("w"),
    )
    context = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{port}/api/v1/vms"
    try:
        for _ in range(200):
            try:
                httpx.get(url, verify=context, headers={"Authorization": f"Bearer {token}"})
                break
            except httpx.TransportError:
                time.sleep(0.1)
        started = time.monotonic()
        latencies, errors = asyncio.run(hammer(url, token, context, args.seconds, args.clients))
        elapsed = time.monotonic() - started
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
    ordered = sorted(latencies)
    result = {
        "endpoint": "GET /api/v1/vms",
        "tls": True,
        "token": True,
        "rate_limit": "5/20",
        "seconds": round(elapsed, 1),
        "clients": args.clients,
        "requests": len(latencies),
        "errors": errors,
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 1),
    }
    print(
        f"{result['requests']} requests in {result['seconds']} s from {args.clients} clients: "
        f"{result['requests_per_second']} req/s, p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms, {errors} errors"
    )
    write_result(args.json, result)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
