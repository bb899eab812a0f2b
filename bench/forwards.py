#!/usr/bin/env python3
"""TCP throughput of a ``MEDA_NETNS`` port forward: through its proxy vs its DNAT rule.

A "guest" (a namespace plugged into meda's bridge where a VM's tap goes, as the security
tests use) sends ``--mib`` MiB to each client. Timed, in rounds: the forward's proxy from
the namespace meda runs in (127.0.0.1 only), the forward's DNAT from inside MEDA_NETNS,
and the guest's address straight from MEDA_NETNS (no forward). Prints medians in MiB/s and
the seconds adding the forward took (port checks; rules and proxy), and writes JSON
(default bench/results/forwards.json). Needs root; makes its own namespaces.

    .venv/bin/python bench/forwards.py [--mib 200] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

from results_file import write_result  # beside this script

from meda_core.backends.context import backend_context
from meda_core.models import PortForward
from meda_core.settings import Settings
from meda_core.state.store import StateStore
from meda_core.testing import namespaces
from meda_core.testing.host import free_port
from meda_tapbridge import TapBridgeNetwork

SEND = (
    "import socket, sys\n"
    "s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True)\n"
    "chunk = bytes(1 << 20)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    with c:\n"
    "        for _ in range(int(sys.argv[1])): c.sendall(chunk)\n"
)
RECEIVE = (
    "import socket, sys, time\n"
    "start = time.monotonic(); got = 0\n"
    "with socket.create_connection((sys.argv[1], int(sys.argv[2])), 10) as c:\n"
    "    while data := c.recv(1 << 20): got += len(data)\n"
    "print(got, time.monotonic() - start)\n"
)


def receive(ns: str | None, host: str, port: int, mib: int) -> float:
    """MiB/s of one download of ``mib`` MiB from ``host:port``, from namespace ``ns``."""
    prefix = [] if ns is None else ["ip", "netns", "exec", ns]
    argv = [*prefix, sys.executable, "-c", RECEIVE, host, str(port)]
    got, seconds = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    assert int(got) == mib << 20, f"got {got} bytes"
    return mib / float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    default_json = Path(__file__).parent / "results" / "forwards.json"
    parser.add_argument("--json", type=Path, default=default_json)
    args = parser.parse_args()
    ns = namespaces.create("meda-bench")
    guest_ns, sender = None, None
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), netns=ns, forward_address=IPv4Address("127.0.0.1"))
        store = StateStore(settings.db_path)
        network = TapBridgeNetwork(backend_context(settings, store))
        try:
            attachment = network.allocate("bench")
            network.plug("bench", attachment)
            assert attachment.tap and attachment.ip and attachment.gateway
            prefix = network.config.network.prefixlen
            guest_ns = namespaces.fake_guest(
                ns, attachment.tap, attachment.mac, f"{attachment.ip}/{prefix}", attachment.gateway
            )
            namespaces.run_in(ns, "ip", "link", "set", attachment.tap, "master", "meda0", "up")
            namespaces.run_in(ns, "ip", "link", "set", "lo", "up")
            sender = subprocess.Popen(
                ["ip", "netns", "exec", guest_ns, sys.executable, "-c", SEND, str(args.mib)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert sender.stdout is not None
            guest_port = int(sender.stdout.readline())
            host_port = free_port()
            forward = PortForward(host_port=host_port, guest_port=guest_port)
            started = time.monotonic()
            assert network.check_host_port(forward) is None  # both namespaces, as an add does
            checked = time.monotonic()
            store.add_forward("bench", forward)
            network.apply_forwards()  # rules and the proxy, ready
            added = {
                "check_seconds": checked - started,
                "apply_seconds": time.monotonic() - checked,
            }
            paths = {
                "proxy (meda's namespace, 127.0.0.1)": (None, "127.0.0.1", host_port),
                "dnat (MEDA_NETNS, 127.0.0.1)": (ns, "127.0.0.1", host_port),
                "direct (MEDA_NETNS to the guest)": (ns, attachment.ip, guest_port),
            }
            rates: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(args.rounds):
                for name, (where, host, port) in paths.items():
                    rates[name].append(receive(where, host, port, args.mib))
        finally:
            if sender is not None:
                sender.kill()
                sender.wait()
            if guest_ns is not None:
                namespaces.destroy(guest_ns)
            for lease in network.context.leases.all(network.config.bridge):
                store.remove_forwards(lease.vm)
                network.release(lease.vm)
            namespaces.destroy(ns)
    result = {
        "mib": args.mib,
        "rounds": args.rounds,
        "median_mib_per_s": {name: round(statistics.median(r), 1) for name, r in rates.items()},
        "all_mib_per_s": {name: [round(x, 1) for x in r] for name, r in rates.items()},
        "forward_added": {name: round(seconds, 3) for name, seconds in added.items()},
    }
    for name, median in result["median_mib_per_s"].items():  # type: ignore[attr-defined]
        print(f"{name:40} {median:8.1f} MiB/s")
    print(
        "adding the forward: " + ", ".join(f"{k} {v}" for k, v in result["forward_added"].items())
    )
    write_result(args.json, result)


if __name__ == "__main__":
    main()
