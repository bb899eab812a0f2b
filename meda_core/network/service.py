"""VM addresses, port forwards and network cleanup, through the VM's network backend."""

from __future__ import annotations

from meda_core.backends.roles import Capability, HypervisorBackend, NetworkBackend, Role
from meda_core.backends.selection import BackendSelector
from meda_core.errors import Conflict, InvalidRequest, NotFound
from meda_core.host import namespaces as netns
from meda_core.models import (
    CleanupReport,
    PortForward,
    PortForwardInfo,
    Protocol,
    VMAddress,
    VMState,
)
from meda_core.settings import Settings
from meda_core.state.store import StateStore
from meda_core.vms.service import VMService, attachment_of

PRIVILEGED_PORTS = 1024


class NetworkService:
    """``/ip``, ``/port-forward`` and ``meda cleanup``."""

    def __init__(
        self, settings: Settings, store: StateStore, backends: BackendSelector, vms: VMService
    ) -> None:
        self._settings = settings
        self._store = store
        self._backends = backends
        self._vms = vms

    def address(self, name: str) -> VMAddress:
        vm = self._vms.get(name)
        return VMAddress(vm=vm.name, ip=vm.ip)

    def guest_endpoint(self, name: str, port: int) -> tuple[str, int]:
        """Host and port where the running VM's TCP ``port`` answers from the namespace
        meda runs in (``meda ssh``), as its network backend says."""
        vm = self._vms.get(name)
        if vm.state != VMState.RUNNING:
            raise Conflict(f"VM '{vm.name}' is {vm.state.value}, not running", name=vm.name)
        if vm.network is None:
            raise Conflict(f"VM '{vm.name}' has no address", name=vm.name)
        network = self._network_of(vm.name, vm.network)
        return network.guest_endpoint(vm.name, attachment_of(vm), vm.port_forwards, port)

    def forwards(self, name: str) -> list[PortForwardInfo]:
        vm = self._vms.get(name)
        return [self.describe(vm.name, vm.network, forward) for forward in vm.port_forwards]

    def describe(self, name: str, network: str | None, forward: PortForward) -> PortForwardInfo:
        """``forward`` of VM ``name`` with where it listens, and the address to use."""
        listeners = self._network_of(name, network).forward_listeners(forward)
        first = listeners[0]
        host, _, port = first.address.rpartition(":")
        return PortForwardInfo(
            **forward.model_dump(),
            address=f"{'127.0.0.1' if host == '0.0.0.0' else host}:{port}",
            netns=first.netns,
            listeners=listeners,
        )

    def add_forward(self, name: str, forward: PortForward) -> PortForwardInfo:
        vm = self._vms.get(name)
        network = self._network_of(vm.name, vm.network)
        if forward.host_port < PRIVILEGED_PORTS and not self._settings.allow_privileged_ports:
            raise InvalidRequest(
                f"host port {forward.host_port} is below {PRIVILEGED_PORTS}; the operator "
                "must allow it with MEDA_ALLOW_PRIVILEGED_PORTS=1",
                host_port=forward.host_port,
            )
        if self._store.forward_owner(forward) is None:
            problem = network.check_host_port(forward)
            if problem is not None:
                raise Conflict(
                    f"host port {forward.host_port}/{forward.protocol.value} is in use: {problem}",
                    host_port=forward.host_port,
                )
        self._store.add_forward(vm.name, forward)
        try:
            self._apply(network, vm.name, forward, add=True)
        except BaseException:
            self._store.remove_forwards(vm.name, forward)
            network.apply_forwards()
            raise
        return self.describe(vm.name, vm.network, forward)

    def remove_forward(self, name: str, host_port: int, protocol: Protocol) -> PortForwardInfo:
        vm = self._vms.get(name)
        network = self._network_of(vm.name, vm.network)
        match = [f for f in vm.port_forwards if (f.host_port, f.protocol) == (host_port, protocol)]
        if not match:
            raise NotFound(
                f"VM '{name}' has no forward of host port {host_port}/{protocol.value}",
                host_port=host_port,
            )
        self._store.remove_forwards(vm.name, match[0])
        try:
            self._apply(network, vm.name, match[0], add=False)
        except BaseException:
            self._store.add_forward(vm.name, match[0])  # it is still there on the host
            raise
        return self.describe(vm.name, vm.network, match[0])

    def _apply(self, network: NetworkBackend, name: str, forward: PortForward, add: bool) -> None:
        if Capability.HOSTFWD not in network.capabilities:
            network.apply_forwards()
            return
        vm = self._vms.get(name)
        if vm.state != VMState.RUNNING or vm.runtime is None:
            return  # applied as hostfwd at the next start
        hypervisor = self._backends.by_name(Role.HYPERVISOR, vm.hypervisor, HypervisorBackend)
        change = hypervisor.add_hostfwd if add else hypervisor.remove_hostfwd
        change(vm.runtime, vm.vm_dir, forward)

    def _network_of(self, name: str, network: str | None) -> NetworkBackend:
        if network is None:
            raise Conflict(f"VM '{name}' has no network", name=name)
        return self._backends.by_name(Role.NETWORK, network, NetworkBackend)

    def restore(self) -> None:
        """Re-apply what stored VMs need (rules, DHCP) after the server (re)starts."""
        network = self._backends.network()
        if network is not None:
            network.restore()

    def cleanup(self, dry_run: bool) -> CleanupReport:
        """Find, and unless ``dry_run`` remove, network resources no VM owns."""
        ns = self._settings.netns
        if ns is not None and not netns.namespace_path(ns).exists():
            # Not made yet, or gone with meda's network: there is nothing in it to clean.
            message = f"network namespace '{ns}' (MEDA_NETNS) does not exist: nothing to clean"
            return CleanupReport(dry_run=dry_run, orphans=[], count=0, message=message)
        network = self._backends.network()
        found = [] if network is None else network.orphans()
        if not dry_run and network is not None and found:
            found = network.remove_orphans()
        return CleanupReport(dry_run=dry_run, orphans=found, count=len(found))
