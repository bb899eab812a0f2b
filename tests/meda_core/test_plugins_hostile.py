"""Broken or odd plugins: listed, never fatal; what a storage plugin declares is checked."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from meda_core.backends.manager import PluginManager
from meda_core.facade import Meda
from meda_core.models import CreateVMRequest
from meda_core.plugin import BackendError, BackendRegistry, hookimpl
from meda_core.settings import Settings
from meda_core.testing.fakes import FakePlugin, FakeStorage


def _module(name: str, **attrs: object) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def test_a_hook_with_a_misspelled_argument_is_listed_not_fatal() -> None:
    @hookimpl
    def meda_register_backends(registy):  # type: ignore[no-untyped-def]
        pass

    plugins = PluginManager()
    plugins.add_plugin("bad-arg", _module("bad_arg", meda_register_backends=meda_register_backends))
    assert plugins.plugins["bad-arg"].error


def test_registering_a_non_class_is_listed_not_fatal() -> None:
    @hookimpl
    def meda_register_backends(registry):  # type: ignore[no-untyped-def]
        registry.add("not a class")

    plugins = PluginManager()
    plugins.add_plugin("junk", _module("junk", meda_register_backends=meda_register_backends))
    assert plugins.plugins["junk"].error


def test_the_same_module_under_a_second_name_does_not_unhook_the_first() -> None:
    seen: list[object] = []

    @hookimpl
    def meda_vm_event(event):  # type: ignore[no-untyped-def]
        seen.append(event)

    observer = _module("observer", meda_vm_event=meda_vm_event)
    plugins = PluginManager()
    plugins.add_plugin("observer", observer)
    plugins.add_plugin("observer-again", observer)  # a second entry point, same module
    assert plugins.plugins["observer-again"].error
    assert plugins.plugins["observer"].error is None
    plugins.emit(object())  # type: ignore[arg-type]
    assert seen, "the first, good registration lost its hook when the second failed"


@pytest.mark.parametrize("disk_name", ["seed.iso", "console.log", "snapshots"])
def test_a_storage_plugin_cannot_name_its_disks_as_the_vms_other_files(
    meda_settings: Settings, tmp_path: Path, disk_name: str
) -> None:
    class Odd(FakeStorage):
        name = "odd"
        priority = 1000

        def disk_name(self) -> str:
            return disk_name

    @hookimpl
    def meda_register_backends(registry: BackendRegistry) -> None:
        registry.add(Odd)

    plugins = PluginManager()
    plugins.add_plugin("fake", FakePlugin())
    plugins.add_plugin("odd", _module("odd", meda_register_backends=meda_register_backends))
    meda = Meda(meda_settings.model_copy(update={"storage": "odd"}), plugins)
    kernel = tmp_path / "k"
    kernel.write_bytes(b"k")
    meda.images.import_files("default", kernel=kernel, cmdline="x")
    with pytest.raises(BackendError, match=r"does not start with 'disk\.'"):
        meda.vms.create(CreateVMRequest(name="vm1"))
    assert meda.vms.list() == []
