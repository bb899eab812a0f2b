"""The catalogue of backend classes that plugins registered, by role and name."""

from __future__ import annotations

from dataclasses import dataclass

from meda_core.backends.roles import ROLE_BASES, Backend, Role
from meda_core.errors import RegistrationError


@dataclass(frozen=True)
class RegisteredBackend:
    cls: type[Backend]
    plugin: str

    @property
    def role(self) -> Role:
        return self.cls.role

    @property
    def name(self) -> str:
        return self.cls.name


class BackendRegistry:
    """Handed to ``meda_register_backends``; plugins call :meth:`add`."""

    def __init__(self) -> None:
        self._backends: dict[tuple[Role, str], RegisteredBackend] = {}
        self._current_plugin = "?"

    def add(self, cls: type[Backend]) -> None:
        """Register a backend class (a subclass of one role's base class)."""
        base = ROLE_BASES.get(getattr(cls, "role", None))  # type: ignore[arg-type]
        if base is None or not issubclass(cls, base):
            raise RegistrationError(f"{cls!r} is not a subclass of a meda backend role")
        key = (cls.role, cls.name)
        if key in self._backends:
            other = self._backends[key].plugin
            raise RegistrationError(
                f"{cls.role} backend '{cls.name}' is already registered by plugin '{other}'"
            )
        self._backends[key] = RegisteredBackend(cls, self._current_plugin)

    def for_plugin(self, plugin: str) -> BackendRegistry:
        """Attribute the next registrations to ``plugin``."""
        self._current_plugin = plugin
        return self

    def remove_plugin(self, plugin: str) -> None:
        """Forget every backend ``plugin`` registered (its registration failed)."""
        for key, backend in list(self._backends.items()):
            if backend.plugin == plugin:
                del self._backends[key]

    def get(self, role: Role, name: str) -> RegisteredBackend | None:
        return self._backends.get((role, name))

    def of_role(self, role: Role) -> list[RegisteredBackend]:
        """Backends of ``role``, most preferred first (priority, then name)."""
        found = [b for b in self._backends.values() if b.role == role]
        return sorted(found, key=lambda b: (-b.cls.priority, b.name))

    def all(self) -> list[RegisteredBackend]:
        return sorted(self._backends.values(), key=lambda b: (b.role, b.name))
