"""How to reach a VM over SSH with meda's managed key (used by ``meda ssh``)."""

from __future__ import annotations

import time
from pathlib import Path

from meda_core.errors import BackendUnavailable
from meda_core.host import namespaces as netns
from meda_core.models import VM
from meda_core.vms.sshkeys import managed_key
from meda_core.vms.userdata import MEDA_USER

#: The guest port of its SSH server.
SSH_PORT = 22
#: Seconds ssh, and the check before it, wait for the guest's SSH port to answer.
CONNECT_TIMEOUT = 10


def ssh_argv(
    vm: VM, endpoint: tuple[str, int], home: Path, command: list[str], ns: str | None
) -> list[str]:
    """argv for the system ssh client to ``endpoint`` (see
    :meth:`~meda_core.network.service.NetworkService.guest_endpoint`): managed key, a
    known-hosts file of this VM's own (it goes with the VM, so a re-created VM never trips
    it), through ``ns``."""
    host, port = endpoint
    key, _ = managed_key(home)
    return [
        *netns.exec_prefix(ns),
        "ssh",
        "-i",
        str(key),
        "-p",
        str(port),
        "-o",
        f"UserKnownHostsFile={vm.vm_dir / 'known_hosts'}",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"ConnectTimeout={CONNECT_TIMEOUT}",
        "-o",
        "LogLevel=ERROR",
        f"{MEDA_USER}@{host}",
        *command,
    ]


def check_reachable(
    vm: VM,
    endpoint: tuple[str, int],
    ns: str | None,
    origin: str,
    wait: float = 0,
    timeout: float = CONNECT_TIMEOUT,
) -> None:
    """Fail with a message saying where meda looked unless the VM's SSH ``endpoint``
    answers from ``ns`` (named by ``origin``: MEDA_NETNS, server.json), within ``wait``
    seconds."""
    host, port = endpoint
    deadline = time.monotonic() + wait
    while (problem := netns.connect_problem(ns, host, port, timeout)) is not None:
        if time.monotonic() >= deadline:
            break
        time.sleep(1)
    if problem is None:
        return
    if ns is None:
        where = (
            "from this host's own network namespace; if meda's network lives in a namespace "
            "(meda serve with MEDA_NETNS), set MEDA_NETNS to it, or start meda serve, whose "
            "server.json tells the CLI"
        )
    else:
        where = f"in network namespace '{ns}' (from {origin}); is the guest's SSH server up?"
    raise BackendUnavailable(
        f"VM '{vm.name}' does not answer at {host}:{port} ({problem}) {where}",
        name=vm.name,
        address=host,
        port=port,
        netns=ns,
    )
