"""The ``dnsmasq`` that meda runs per bridge: DHCP with static leases only, and DNS on the
gateway that forwards to the upstream servers and answers nothing from the host's files."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from meda_core.plugin import Lease, RuntimeInfo, atomic_file
from meda_core.plugin import namespaces as netns
from meda_core.plugin import processes as procs

log = logging.getLogger(__name__)


class DhcpServer:
    """One dnsmasq for one bridge; its files live in ``state_dir``."""

    def __init__(self, state_dir: Path, ns: str | None, bridge: str) -> None:
        self.state_dir = state_dir
        self.ns = ns
        self.bridge = bridge

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "dnsmasq.pid"

    @property
    def hostsfile(self) -> Path:
        return self.state_dir / "dhcp-hosts"

    def running(self) -> RuntimeInfo | None:
        """The dnsmasq process, identified by its pid file and its command line."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        runtime = procs.identify(pid)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            return None
        return runtime if runtime and str(self.pidfile) in cmdline else None

    def write_hosts(self, leases: list[Lease]) -> None:
        # No names: dnsmasq would answer them in DNS, telling guests of each other (a guest
        # takes its hostname from its seed).
        self._write(self.hostsfile, "".join(f"{lease.mac},{lease.ip}\n" for lease in leases))

    def refresh(self, leases: list[Lease]) -> bool:
        """Have a running dnsmasq serve ``leases``; False if none runs."""
        runtime = self.running()
        if runtime is None:
            return False
        self.write_hosts(leases)
        os.kill(runtime.pid, signal.SIGHUP)  # dnsmasq re-reads --dhcp-hostsfile on SIGHUP
        return True

    @property
    def serversfile(self) -> Path:
        return self.state_dir / "dns-servers"

    def write_servers(self, servers: list[str]) -> None:
        """The upstream name servers, in the file dnsmasq re-reads on SIGHUP."""
        if not servers:
            log.warning(
                "no upstream name server (MEDA_DNS_SERVERS is empty and the host's "
                "resolv.conf names none but loopback): guests' DNS answers no names"
            )
        self._write(self.serversfile, "".join(f"server={server}\n" for server in servers))

    def _write(self, path: Path, text: str) -> None:
        """Replace one of dnsmasq's files at once: it may re-read it at any moment."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            tmp.write_text(text)

    def argv(self, gateway: str, netmask: str, network: str) -> list[str]:
        return [
            "dnsmasq",
            "--conf-file=/dev/null",
            f"--pid-file={self.pidfile}",
            f"--interface={self.bridge}",
            "--bind-interfaces",
            "--except-interface=lo",
            f"--dhcp-range={network},static,{netmask},12h",
            f"--dhcp-hostsfile={self.hostsfile}",
            f"--dhcp-leasefile={self.state_dir / 'dnsmasq.leases'}",
            f"--dhcp-option=option:router,{gateway}",
            f"--dhcp-option=option:dns-server,{gateway}",
            "--dhcp-authoritative",
            # DNS: only the upstream servers (no resolv.conf, no /etc/hosts of the host),
            # and no private reverse lookups or plain names sent out.
            "--no-resolv",
            "--no-hosts",
            f"--servers-file={self.serversfile}",
            "--domain-needed",
            "--bogus-priv",
            # Nor the names guests send in DHCP: one could take another's name in DNS.
            "--dhcp-ignore-names",
            "--user=root",
            "--group=root",
            # Not --log-dhcp into a file: guests choose what dnsmasq would log, and how
            # often. Problems still go to syslog, which rate-limits.
            "--quiet-dhcp",
        ]

    def ensure(
        self, leases: list[Lease], gateway: str, netmask: str, network: str, servers: list[str]
    ) -> None:
        """Serve ``leases`` and DNS through ``servers``: start dnsmasq, or have the running
        one re-read its files (one started with other options is replaced)."""
        argv = self.argv(gateway, netmask, network)
        runtime = self.running()
        if runtime is not None and _cmdline(runtime.pid) != argv:
            self.stop()  # an older meda's (no DNS), or another gateway's
        self.write_servers(servers)
        if self.refresh(leases):
            return
        self.write_hosts(leases)
        netns.run(self.ns, argv)

    def stop(self) -> bool:
        """Stop dnsmasq and remove its files; True if a process was stopped."""
        runtime = self.running()
        if runtime is not None:
            os.kill(runtime.pid, signal.SIGTERM)
            if not procs.wait_gone(runtime, 5):
                procs.kill(runtime)
        for name in ("dnsmasq.pid", "dhcp-hosts", "dnsmasq.leases", "dnsmasq.log", "dns-servers"):
            (self.state_dir / name).unlink(missing_ok=True)
        return runtime is not None


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().rstrip("\0").split("\0")
    except OSError:
        return []
