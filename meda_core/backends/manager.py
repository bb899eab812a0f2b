"""Plugin discovery and the typed facade over pluggy's plugin manager.

Plugins are found through the ``meda`` entry-point group with
:mod:`importlib.metadata` (the standard library: no extra dependency, and it
gives us the distribution name and version to report). Loading is tolerant: a
plugin that fails to import or to register, or that implements a hook meda does
not have, is recorded with its error and skipped, and meda goes on with the rest.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType

import pluggy

from meda_core.backends import hookspecs
from meda_core.backends.catalogue import BackendRegistry
from meda_core.models import PluginInfo
from meda_core.state.events import VMEvent

ENTRY_POINT_GROUP = "meda"
log = logging.getLogger(__name__)


@dataclass
class LoadedPlugin:
    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    error: str | None = None
    backends: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)

    def info(self) -> PluginInfo:
        return PluginInfo(
            name=self.name,
            module=self.module,
            distribution=self.distribution,
            version=self.version,
            error=self.error,
            backends=self.backends,
            roles=sorted({backend.split(":")[0] for backend in self.backends}),
            hooks=self.hooks,
        )


def _short_error(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


class PluginManager:
    """Loads plugins, collects their backends and broadcasts events to them."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager("meda")
        self._pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, LoadedPlugin] = {}
        self.registry = BackendRegistry()

    def load_entry_points(self, disabled: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in disabled or ep.name in self.plugins:
                continue
            dist = ep.dist
            record = LoadedPlugin(
                name=ep.name,
                module=ep.value,
                distribution=dist.name if dist else None,
                version=dist.version if dist else None,
            )
            self.plugins[ep.name] = record
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take meda down
                record.error = _short_error(exc)
                log.warning("plugin %s failed to load: %s", ep.name, record.error)
                continue
            self._register(record, module)

    def add_plugin(
        self, name: str, plugin: ModuleType | object, version: str | None = None
    ) -> None:
        """Register an in-process plugin object (tests, embedding programs)."""
        module = getattr(plugin, "__name__", type(plugin).__name__)
        record = LoadedPlugin(name=name, module=module, version=version)
        self.plugins[name] = record
        self._register(record, plugin)

    def _register(self, record: LoadedPlugin, plugin: object) -> None:
        if not self._validate(record, plugin):
            return
        others = [p for p in self._pm.get_plugins() if p is not plugin]
        caller = self._pm.subset_hook_caller("meda_register_backends", remove_plugins=others)
        before = {(b.role, b.name) for b in self.registry.all()}
        try:
            caller(registry=self.registry.for_plugin(record.name))
        except Exception as exc:
            record.error = _short_error(exc)
            log.warning("plugin %s failed to register: %s", record.name, record.error)
            self._pm.unregister(plugin)
            self.registry.remove_plugin(record.name)
        record.backends = [
            f"{b.role}:{b.name}" for b in self.registry.all() if (b.role, b.name) not in before
        ]
        if record.error is None:
            callers = self._pm.get_hookcallers(plugin) or []
            record.hooks = sorted(caller.name for caller in callers)

    def _validate(self, record: LoadedPlugin, plugin: object) -> bool:
        """Register ``plugin`` if its hook implementations match meda's hook specs.

        ``check_pending`` finds implementations of hooks meda does not have (a misspelled
        ``meda_register_backend``, say). Every plugin registered before passed it, so what
        it finds is this plugin's: the plugin is recorded with the error and left out.
        """
        try:
            self._pm.register(plugin, name=record.name)
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            record.error = f"{exc} (meda's hooks: {', '.join(self._hook_names())})"
        except Exception as exc:
            record.error = _short_error(exc)
        if record.error is None:
            return True
        log.warning("plugin %s failed to register: %s", record.name, record.error)
        if self._pm.get_name(plugin) == record.name:  # this call registered it, not another
            self._pm.unregister(plugin)
        return False

    def _hook_names(self) -> list[str]:
        callers = vars(self._pm.hook).values()
        return sorted(caller.name for caller in callers if caller.has_spec())

    def emit(self, event: VMEvent) -> None:
        """Broadcast ``event``; an observer that raises is logged and ignored."""
        for impl in self._pm.hook.meda_vm_event.get_hookimpls():
            try:
                impl.function(event=event)
            except Exception:
                log.exception("plugin %s failed on event %s", impl.plugin_name, event.kind)

    def report(self) -> list[PluginInfo]:
        return [p.info() for p in sorted(self.plugins.values(), key=lambda p: p.name)]
