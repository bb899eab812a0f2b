from __future__ import annotations

import pytest

from meda_core import hookimpl
from meda_core.backends.catalogue import BackendRegistry
from meda_core.backends.context import backend_context
from meda_core.backends.manager import PluginManager
from meda_core.backends.roles import Availability, Role
from meda_core.backends.selection import BackendSelector
from meda_core.errors import BackendUnavailable
from meda_core.settings import Settings
from meda_core.state.store import StateStore
from meda_core.testing.fakes import FakePlugin, FakeStorage


class Unavailable(FakeStorage):
    name = "unavailable"
    priority = 1000

    def check_available(self) -> Availability:
        return Availability.no("needs a unicorn")


class UnavailablePlugin:
    @hookimpl
    def meda_register_backends(self, registry: BackendRegistry) -> None:
        registry.add(Unavailable)


def _selector(settings: Settings) -> BackendSelector:
    settings.home.mkdir(parents=True, exist_ok=True)
    plugins = PluginManager()
    plugins.add_plugin("fake", FakePlugin())
    plugins.add_plugin("unavailable", UnavailablePlugin())
    return BackendSelector(
        plugins.registry, backend_context(settings, StateStore(settings.db_path))
    )


def test_auto_skips_unavailable_backends(meda_settings: Settings) -> None:
    assert _selector(meda_settings).storage().name == "fake"


def test_explicit_unavailable_backend_says_why(meda_settings: Settings) -> None:
    meda_settings.storage = "unavailable"
    with pytest.raises(BackendUnavailable, match="needs a unicorn"):
        _selector(meda_settings).storage()


def test_unknown_backend_lists_registered_ones(meda_settings: Settings) -> None:
    meda_settings.hypervisor = "firecracker"
    with pytest.raises(BackendUnavailable, match="registered: fake"):
        _selector(meda_settings).hypervisor()


def test_describe_marks_selected_and_reasons(meda_settings: Settings) -> None:
    infos = {(b.role, b.name): b for b in _selector(meda_settings).describe()}
    assert infos[("storage", "fake")].selected
    assert infos[("storage", "unavailable")].reason == "needs a unicorn"
    assert not infos[("storage", "unavailable")].selected


def test_role_without_backends_is_optional(meda_settings: Settings) -> None:
    meda_settings.home.mkdir(parents=True, exist_ok=True)
    context = backend_context(meda_settings, StateStore(meda_settings.db_path))
    selector = BackendSelector(PluginManager().registry, context)
    assert selector.optional(Role.NETWORK) is None
