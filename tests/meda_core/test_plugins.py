from __future__ import annotations

from pathlib import Path

import pytest

from meda_core import hookimpl
from meda_core.backends.catalogue import BackendRegistry
from meda_core.backends.manager import PluginManager
from meda_core.settings import Settings
from meda_core.state.events import VMEvent, VMEventKind
from meda_core.testing.fakes import FakePlugin, FakeStorage


def test_entry_points_load_shipped_plugins() -> None:
    plugins = PluginManager()
    plugins.load_entry_points()
    report = {p.name: p for p in plugins.report()}
    assert report["qemu"].backends == ["hypervisor:qemu"]
    assert report["qcow2"].backends == ["storage:qcow2"]
    assert report["qemu"].version and report["qemu"].distribution == "meda"


def test_broken_plugin_is_reported_not_fatal(
    broken_plugin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(broken_plugin_dir))
    plugins = PluginManager()
    plugins.load_entry_points()
    report = {p.name: p for p in plugins.report()}
    assert "this plugin is broken" in (report["broken"].error or "")
    assert report["broken"].distribution == "meda-broken-plugin"
    assert report["qemu"].error is None


def test_a_misspelled_hook_is_reported_not_fatal(
    misspelled_plugin_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.syspath_prepend(str(misspelled_plugin_dir))
    plugins = PluginManager()
    plugins.load_entry_points()
    report = {p.name: p for p in plugins.report()}
    error = report["typo"].error or ""
    assert "unknown hook 'meda_register_backend'" in error
    assert "meda_register_backends" in error.split("meda's hooks:")[1]  # the likely fix
    assert report["typo"].backends == [] and report["typo"].hooks == []
    assert report["typo"].distribution == "meda-typo-plugin"
    assert "plugin typo failed to register" in caplog.text
    assert report["qemu"].error is None and report["qemu"].backends == ["hypervisor:qemu"]
    assert {b.plugin for b in plugins.registry.all()} >= {"qemu", "qcow2"}
    assert "typo" not in {b.plugin for b in plugins.registry.all()}


class _Misspelled:
    @hookimpl
    def meda_vm_events(self, event: VMEvent) -> None:
        raise AssertionError("a hook meda does not have is never called")


def test_a_misspelled_plugin_is_left_out_and_later_plugins_still_load() -> None:
    """Every plugin is checked as it registers: one with a bad hook spoils no other."""
    plugins = PluginManager()
    plugins.add_plugin("typo", _Misspelled())
    plugins.add_plugin("fake", FakePlugin())
    report = {p.name: p for p in plugins.report()}
    assert "unknown hook 'meda_vm_events'" in (report["typo"].error or "")
    assert report["fake"].error is None and report["fake"].backends
    assert "meda_vm_events" not in {
        caller.name for caller in vars(plugins._pm.hook).values() if caller.get_hookimpls()
    }


def test_disabled_plugins_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDA_DISABLE_PLUGINS", "qemu, user")
    plugins = PluginManager()
    plugins.load_entry_points(disabled=Settings().disabled())
    loaded = {p.name: p for p in plugins.report()}
    assert "qemu" not in loaded and "user" not in loaded
    assert loaded["qcow2"].roles == ["storage"]
    assert loaded["qcow2"].hooks == ["meda_register_backends"]


class _RaisingRegistrar:
    @hookimpl
    def meda_register_backends(self, registry: BackendRegistry) -> None:
        registry.add(FakeStorage)
        raise RuntimeError("boom")


class _NotABackend:
    @hookimpl
    def meda_register_backends(self, registry: BackendRegistry) -> None:
        registry.add(dict)  # type: ignore[arg-type]


def test_failing_registration_is_recorded_and_rolled_back() -> None:
    plugins = PluginManager()
    plugins.add_plugin("raising", _RaisingRegistrar())
    plugins.add_plugin("bogus", _NotABackend())
    report = {p.name: p for p in plugins.report()}
    assert "boom" in (report["raising"].error or "")
    assert "not a subclass" in (report["bogus"].error or "")
    assert plugins.registry.all() == []


def test_duplicate_backend_name_is_an_error_for_the_second_plugin() -> None:
    plugins = PluginManager()
    plugins.add_plugin("first", FakePlugin())
    plugins.add_plugin("second", FakePlugin())
    report = {p.name: p for p in plugins.report()}
    assert report["first"].error is None
    assert "already registered" in (report["second"].error or "")


class _Observer:
    def __init__(self) -> None:
        self.events: list[VMEvent] = []

    @hookimpl
    def meda_vm_event(self, event: VMEvent) -> None:
        self.events.append(event)


class _FailingObserver:
    @hookimpl
    def meda_vm_event(self, event: VMEvent) -> None:
        raise RuntimeError("observer failed")


def test_events_reach_observers_even_past_a_failing_one() -> None:
    plugins = PluginManager()
    observer = _Observer()
    plugins.add_plugin("failing", _FailingObserver())
    plugins.add_plugin("observer", observer)
    plugins.emit(VMEvent(kind=VMEventKind.CREATED, vm="a", state=None))
    assert [e.kind for e in observer.events] == [VMEventKind.CREATED]
