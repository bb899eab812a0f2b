"""The narrow views of the state store that backends get (leases, read-only records)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from meda_core.backends.roles import BackendContext
from meda_core.models import VM, PortForward
from meda_core.settings import Settings
from meda_core.state.store import Lease, StateStore


class StoreLeaseBook:
    """:class:`~meda_core.backends.roles.LeaseBook` on the store's leases table."""

    __slots__ = ("__store",)

    def __init__(self, store: StateStore) -> None:
        self.__store = store

    def allocate(
        self, network: str, vm: str, candidates: Iterable[str], new_mac: Callable[[], str]
    ) -> Lease:
        return self.__store.allocate_lease(network, vm, candidates, new_mac)

    def find(self, network: str, vm: str) -> Lease | None:
        return self.__store.lease_for(network, vm)

    def release(self, network: str, vm: str) -> None:
        self.__store.release_lease(network, vm)

    def all(self, network: str) -> list[Lease]:
        return self.__store.leases(network)


class StoreVMView:
    """:class:`~meda_core.backends.roles.VMView` on the store's VMs and forwards."""

    __slots__ = ("__store",)

    def __init__(self, store: StateStore) -> None:
        self.__store = store

    def list_vms(self) -> list[VM]:
        return self.__store.list_vms()

    def get_vm(self, name: str) -> VM | None:
        return self.__store.get_vm(name)

    def forwards(self) -> list[tuple[str, PortForward]]:
        return self.__store.forwards()


def backend_context(settings: Settings, store: StateStore) -> BackendContext:
    """The context backends are constructed with: ``settings`` and views of ``store``."""
    return BackendContext(settings, StoreLeaseBook(store), StoreVMView(store))
