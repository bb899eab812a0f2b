"""Choosing one backend per role from configuration (``MEDA_<ROLE>=auto|<name>``)."""

from __future__ import annotations

import logging
from typing import TypeVar, cast

from meda_core.backends.catalogue import BackendRegistry, RegisteredBackend
from meda_core.backends.roles import (
    AgentBackend,
    Availability,
    Backend,
    BackendContext,
    HypervisorBackend,
    NetworkBackend,
    RegistryBackend,
    Role,
    StorageBackend,
)
from meda_core.errors import BackendUnavailable, InvalidRequest
from meda_core.models import BackendInfo

B = TypeVar("B", bound=Backend)
log = logging.getLogger(__name__)


class BackendSelector:
    """Instantiates backends on first use and picks the configured one per role."""

    def __init__(self, registry: BackendRegistry, context: BackendContext) -> None:
        self._registry = registry
        self._context = context
        self._instances: dict[tuple[Role, str], Backend] = {}
        self._availability: dict[tuple[Role, str], Availability] = {}
        self._chosen: dict[Role, Backend] = {}

    def instance(self, entry: RegisteredBackend) -> Backend:
        key = (entry.role, entry.name)
        if key not in self._instances:
            self._instances[key] = entry.cls(self._context)
        return self._instances[key]

    def availability(self, entry: RegisteredBackend) -> Availability:
        key = (entry.role, entry.name)
        if key not in self._availability:
            try:
                self._availability[key] = self.instance(entry).check_available()
            except Exception as exc:
                self._availability[key] = Availability.no(f"availability check failed: {exc}")
        return self._availability[key]

    def choose(self, role: Role) -> Backend:
        """The backend configured for ``role``; :class:`BackendUnavailable` says why not."""
        if role in self._chosen:
            return self._chosen[role]
        wanted = self._context.settings.role_choice(role.value)
        candidates = self._registry.of_role(role)
        if wanted != "auto":
            entry = self._registry.get(role, wanted)
            if entry is None:
                names = ", ".join(c.name for c in candidates) or "none"
                raise BackendUnavailable(
                    f"no {role} backend named '{wanted}' (MEDA_{role.upper()}); "
                    f"registered: {names}",
                    role=role.value,
                )
            candidates = [entry]
        reasons: list[str] = []
        for entry in candidates:
            available = self.availability(entry)
            if available.ok:
                if reasons:
                    log.info("%s backend: using %s (%s)", role, entry.name, "; ".join(reasons))
                self._chosen[role] = self.instance(entry)
                return self._chosen[role]
            reasons.append(f"{entry.name} unavailable: {available.reason}")
        detail = "; ".join(reasons) or f"no plugin registers a {role} backend"
        raise BackendUnavailable(
            f"no usable {role} backend ({detail})", role=role.value, reasons=reasons
        )

    def optional(self, role: Role) -> Backend | None:
        """Like :meth:`choose`, but None when no backend of ``role`` is registered at all."""
        if not self._registry.of_role(role):
            return None
        return self.choose(role)

    def hypervisor(self) -> HypervisorBackend:
        return cast(HypervisorBackend, self.choose(Role.HYPERVISOR))

    def storage(self) -> StorageBackend:
        return cast(StorageBackend, self.choose(Role.STORAGE))

    def registry(self) -> RegistryBackend:
        return cast(RegistryBackend, self.choose(Role.REGISTRY))

    def network(self) -> NetworkBackend | None:
        """The network backend, or None when no plugin offers one (VMs get no NIC)."""
        return cast(NetworkBackend | None, self.optional(Role.NETWORK))

    def agent(self) -> AgentBackend | None:
        """The agent backend, or None when no plugin offers one (guests are reached by
        SSH only: exec and files answer NO_AGENT)."""
        return cast(AgentBackend | None, self.optional(Role.AGENT))

    def by_name(self, role: Role, name: str, base: type[B]) -> B:
        """A specific backend (the one a VM was created with), checked for availability."""
        entry = self._registry.get(role, name)
        if entry is None:
            raise BackendUnavailable(
                f"{role} backend '{name}' is not installed (its plugin is missing or broken)",
                role=role.value,
                backend=name,
            )
        backend = self.instance(entry)
        if not isinstance(backend, base):
            raise BackendUnavailable(f"'{name}' is not a {role} backend")
        return backend

    def named(self, role: Role, name: str, base: type[B]) -> B:
        """A backend a user asked for by name: unknown names are their mistake (400)."""
        if self._registry.get(role, name) is None:
            known = sorted(entry.name for entry in self._registry.of_role(role))
            raise InvalidRequest(
                f"there is no {role} backend '{name}' (installed: {', '.join(known)})",
                role=role.value,
                backend=name,
                installed=known,
            )
        return self.by_name(role, name, base)

    def describe(self) -> list[BackendInfo]:
        """Every registered backend, whether it is available and whether it is selected."""
        selected: dict[Role, str] = {}
        for role in Role:
            try:
                backend = self.optional(role)
            except BackendUnavailable:
                continue
            if backend is not None:
                selected[role] = backend.name
        infos = []
        for entry in self._registry.all():
            available = self.availability(entry)
            infos.append(
                BackendInfo(
                    role=entry.role.value,
                    name=entry.name,
                    plugin=entry.plugin,
                    available=available.ok,
                    reason=available.reason,
                    selected=selected.get(entry.role) == entry.name,
                )
            )
        return infos
