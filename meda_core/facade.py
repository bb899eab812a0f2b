"""``Meda``: the typed facade that wires settings, plugins, state and services together."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import cast

from meda_core import __version__
from meda_core.backends.context import backend_context
from meda_core.backends.manager import PluginManager
from meda_core.backends.roles import AgentBackend, Role, StorageBackend
from meda_core.backends.selection import BackendSelector
from meda_core.errors import InsufficientCapacity
from meda_core.host.private import private_home
from meda_core.images import diskprobe
from meda_core.images.service import ImageService
from meda_core.models import VM, Health, PluginReport
from meda_core.network.service import NetworkService
from meda_core.settings import Settings
from meda_core.state.eventbus import EventBus
from meda_core.state.events import VMEvent
from meda_core.state.operations import Operations, Progress
from meda_core.state.store import StateStore
from meda_core.vms.console import Consoles
from meda_core.vms.guest import GuestService
from meda_core.vms.lifecycle import Lifecycles
from meda_core.vms.service import VMService
from meda_core.vms.snapshots import SnapshotService
from meda_core.vms.templates import TemplateBuild, TemplateJob, WarmRuns
from meda_core.vms.watch import Watcher

log = logging.getLogger(__name__)


class Meda:
    """One meda instance: what the API server, the CLI and embedding programs use.

    >>> meda = Meda()                       # settings from MEDA_* variables
    >>> meda.vms.create(CreateVMRequest(name="demo"))
    """

    def __init__(
        self,
        settings: Settings | None = None,
        plugins: PluginManager | None = None,
    ) -> None:
        self.settings = settings or Settings()
        if plugins is None:
            plugins = PluginManager()
            plugins.load_entry_points(self.settings.disabled())
        self.plugins = plugins
        private_home(self.settings.home)
        self.store = StateStore(self.settings.db_path)
        self.backends = BackendSelector(
            plugins.registry, backend_context(self.settings, self.store)
        )
        self.images = ImageService(
            self.store,
            self.settings.home,
            self.settings.default_image,
            self.backends.storage,
            self.backends.registry,
            diskprobe.roots(self.settings),
            lambda name: self.backends.by_name(Role.STORAGE, name, StorageBackend),
            diskprobe.limits(self.settings),
            self.settings.allowed_registry_set(),
            lambda: cast(AgentBackend | None, self.backends.optional(Role.AGENT)),
        )
        self.events = EventBus(
            lambda kind, data: self.store.journal_event(kind, data, self.settings.event_journal)
        )
        self.operations = Operations(self.events, max_active=self.settings.max_operations)
        self.vms = VMService(self.settings, self.store, self.images, self.backends, self._emit)
        self.guest = GuestService(self.settings, self.vms, self.backends)
        self.network = NetworkService(self.settings, self.store, self.backends, self.vms)
        self.consoles = Consoles(self.vms, self.store, self.settings.console_max_bytes)
        self.snapshots = SnapshotService(self.backends, self.vms, self.guest)
        self.warm_runs = WarmRuns(
            self.settings, self.store, self.vms, self.snapshots, self.backends, self.guest
        )
        self.warm_runs.background = self.build_template
        self.lifecycles = Lifecycles(self.vms, self.settings.restart_backoff_max)
        self._watcher: Watcher | None = None

    def build_template(self, job: TemplateJob) -> None:
        """Build a run's template as a background operation of this process (listed
        with the others; ``close`` calls it off)."""

        def work(progress: Progress) -> TemplateBuild:
            return self.warm_runs.build(job)

        try:
            self.operations.submit("template", work)
        except InsufficientCapacity as error:  # the run succeeded; a later one builds it
            log.warning("template %s not built now: %s", job.name, error.message)

    def close(self) -> None:
        """Call off background work and wait for template builds to clean up after
        themselves (a server's process ends right after)."""
        if not self.warm_runs.shutdown():
            log.warning("template builds still under way at shutdown")
        self.operations.shutdown()
        self.guest.close()
        self.store.close()

    def watch(self) -> Watcher:
        """Keep the VM records in line with the host by events from now on (a server does
        this once it has recovered): reads then answer from the store alone."""
        if self._watcher is None:
            watcher = Watcher(
                self.vms, self.store, self.settings.reconcile_interval, self.consoles.rotate_all
            )
            watcher.start()
            self._watcher = watcher
            self.lifecycles.start()
        return self._watcher

    @property
    def watched(self) -> bool:
        """True while :meth:`watch` keeps the records current: reads only read the store."""
        return self.vms.watched

    def unwatch(self) -> None:
        """Stop :meth:`watch`ing: reads reconcile each VM again."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            self.lifecycles.stop()
            watcher.stop()

    def recover(self) -> list[VM]:
        """Settle every VM after a (re)start and bring back what their network needs.

        Running guests are re-adopted as they are; operations a crash cut short are rolled
        forward or back; rules and DHCP come back after a host reboot.
        """
        vms = self.store.add_forwards(self.vms.reconcile_all())
        self.network.restore()
        return vms

    def _emit(self, event: VMEvent) -> None:
        self.plugins.emit(event)
        self.events.publish("vm", event.model_dump(mode="json"))
        self.lifecycles.observe(event)
        watcher = self._watcher
        if watcher is not None:  # a VM started, stopped or went: what to watch changed
            watcher.poke()

    def plugin_report(self) -> PluginReport:
        return PluginReport(plugins=self.plugins.report(), backends=self.backends.describe())

    def health(self) -> Health:
        return Health(status="healthy", version=__version__, timestamp=datetime.now(UTC))
