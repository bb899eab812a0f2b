"""``run`` on the fast path: clone the image's warm template, built in the background.

Readiness is a property of the image (``Image.ready_port``), or of the run
(``RunRequest.ready_agent``: the guest's agent answers): a run without a readiness signal
boots cold, since nothing tells when a template would be worth snapshotting. For a run
with one, a template is keyed by everything that shapes the guest — the image (its
record, so a re-pulled or re-imported image makes a new one), memory, vCPUs, disk, user
data and the readiness signal — so a later caller's resources are never silently replaced
by an older caller's.

No run waits for a template: the first run of a shape boots its own VM cold and leaves
the template to a background build (boot, wait until it is ready, snapshot, power off),
which holds the template's lock; a run that finds the lock held boots cold too. A build
that fails is recorded beside the lock, and runs boot cold at once (saying why) until
``MEDA_RUN_TEMPLATE_RETRY`` seconds have passed or the image changes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from meda_core.backends.roles import DEVICE_LAYOUT, Capability
from meda_core.backends.selection import BackendSelector
from meda_core.errors import InsufficientCapacity, MedaError
from meda_core.host.locks import remove_held, try_exclusive
from meda_core.inputs.names import parse_image_ref
from meda_core.models import (
    VM,
    CreateVMRequest,
    Image,
    Policies,
    RunInfo,
    RunRequest,
    VMState,
    chosen_port,
)
from meda_core.settings import Settings
from meda_core.state.store import StateStore
from meda_core.vms import readiness
from meda_core.vms.guest import GuestService
from meda_core.vms.service import VMService
from meda_core.vms.snapshots import SnapshotService

log = logging.getLogger(__name__)
TEMPLATE_PREFIX = "tpl-"
#: What tells a template is ready: a guest port that answers, or its agent.
Signal = int | Literal["agent"]


class TemplateJob(BaseModel):
    """What a background build needs: the template's name and the shape it is keyed by."""

    name: str
    image: str
    fingerprint: str
    memory: str
    cpus: int
    disk: str
    user_data: str | None
    ready_port: int
    #: Ready once the guest's agent answers (``ready_port`` is then 0).
    ready_agent: bool = False
    #: The run's own VM: its guest boots first (the build waits until it is ready).
    after: str | None = None

    @property
    def signal(self) -> Signal:
        return "agent" if self.ready_agent else self.ready_port


class TemplateBuild(BaseModel):
    """What a background build did: ``built``, ``ready`` (already was) or ``skipped``."""

    template: str
    outcome: Literal["built", "ready", "skipped"]
    reason: str


#: Starts a build without waiting for it (a thread of ``meda serve``, a detached process).
Background = Callable[[TemplateJob], None]


@dataclass(frozen=True)
class Plan:
    """How a run makes its VM, and the template build it leaves behind, if any."""

    info: RunInfo
    build: TemplateJob | None = None


#: What an image record holds that is not what its guests boot: where it came from or
#: went, and when. A push or a re-pull of the same bytes keeps the image's templates.
NOT_BOOTED = frozenset({"registry", "org", "digest", "created", "size"})


def image_fingerprint(image: Image) -> str:
    """What the guests of ``image`` boot (files, command line, defaults, ready port)."""
    booted = image.model_dump_json(exclude=set(NOT_BOOTED))
    return hashlib.sha256(booted.encode()).hexdigest()[:16]


def template_name(image: Image, request: RunRequest, ready: Signal) -> str:
    shape = {
        "image": image_fingerprint(image),
        "memory": request.memory,
        "cpus": request.cpus,
        "disk": request.disk,
        "user_data": request.user_data,
        "ready_port": ready,
        "layout": DEVICE_LAYOUT,  # a template of other devices cannot be restored
    }
    key = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
    return f"{TEMPLATE_PREFIX}{key}"


def can_clone(backends: BackendSelector) -> bool:
    """True when the hypervisor snapshots and the network isolates (else: cold runs)."""
    network = backends.network()
    return (
        Capability.SNAPSHOT in backends.hypervisor().capabilities
        and network is not None
        and Capability.ISOLATED in network.capabilities
    )


def signal_of(image: Image, request: RunRequest) -> Signal | None:
    """What tells that a run's guest is ready: the agent if the run says so, else the ready
    port (the run's, else the image's); None: nothing does."""
    return "agent" if request.ready_agent else chosen_port(request.ready_port, image.ready_port)


def said(signal: Signal) -> str:
    return "its agent answers" if signal == "agent" else f"port {signal} answers"


def _job(name: str, image: Image, request: RunRequest, signal: Signal) -> TemplateJob:
    """The background build of template ``name`` that ``request``'s run leaves behind."""
    return TemplateJob(
        name=name,
        image=image.ref,
        fingerprint=image_fingerprint(image),
        memory=request.memory,
        cpus=request.cpus,
        disk=request.disk,
        user_data=request.user_data,
        ready_port=0 if signal == "agent" else signal,
        ready_agent=signal == "agent",
        after=request.name,
    )


def _info(path: Literal["warm", "cold"], reason: str, template: str, signal: Signal) -> RunInfo:
    port = None if signal == "agent" else signal
    return RunInfo(
        path=path, reason=reason, template=template, ready_port=port, ready_agent=port is None
    )


def _cold(reason: str, template: str | None = None, signal: Signal | None = None) -> RunInfo:
    if template is None or signal is None:
        return RunInfo(path="cold", reason=reason)
    return _info("cold", reason, template, signal)


class WarmRuns:
    """Templates for ``run``: found, built in the background, retired when their image
    changes."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        vms: VMService,
        snapshots: SnapshotService,
        backends: BackendSelector,
        guest: GuestService,
    ) -> None:
        self._settings = settings
        self._guest = guest
        self._store = store
        self._vms = vms
        self._snapshots = snapshots
        self._backends = backends
        self._stop = threading.Event()
        self._active = 0  # builds under way in this process
        self._idle = threading.Condition()
        #: How builds are started; ``Meda`` and the CLI set it (until then: none is).
        self.background: Background = lambda job: log.info("no builder for %s", job.name)

    # ---- runs ----

    def plan(self, image: Image, request: RunRequest) -> Plan:
        """Warm (its template is ready) or cold, and why; never waits for a build."""
        signal = signal_of(image, request)
        reason = self._why_cold(image, request, signal)
        if reason is not None:
            return Plan(_cold(reason))
        assert signal is not None
        name = template_name(image, request, signal)
        with try_exclusive(self._lock(name)) as free:
            if not free:
                why = f"template {name} is being built; runs do not wait"
                return Plan(_cold(why, name, signal))
            template = self._store.get_vm(name)
            if template is not None and template.snapshot is not None:
                return Plan(_info("warm", f"a clone of template {name}", name, signal))
            failed = self._failure(name)
        if failed is not None:
            return Plan(_cold(failed, name, signal))
        wait = f"port {signal}" if signal != "agent" else "its guest's agent"
        reason = (
            f"first run of this image and shape: template {name} is built in the "
            f"background (it waits for {wait}); later runs clone it"
        )
        return Plan(_cold(reason, name, signal), _job(name, image, request, signal))

    def _why_cold(self, image: Image, request: RunRequest, signal: Signal | None) -> str | None:
        """Why this run boots cold whatever templates there are (None: it may be warm)."""
        if request.no_start:
            return "no_start: the VM is created, not started"
        if request.cold:
            return "a cold start was asked for"
        if signal is None:
            return (
                f"image {image.ref} gives no readiness signal (no ready_port), so no warm "
                "template is made; set one on import, pull or create-image, or in the run "
                "(or ready_agent: its agent answers)"
            )
        if signal == "agent" and self._backends.agent() is None:
            return "ready_agent: no agent backend is installed, so no agent can answer"
        if not can_clone(self._backends):
            return "the backends cannot clone (snapshots and isolated networks)"
        return None

    def clone(self, info: RunInfo, name: str, policies: Policies | None = None) -> VM:
        assert info.template is not None
        return self._snapshots.clone(info.template, name, policies)

    # ---- builds ----

    def build(self, job: TemplateJob) -> TemplateBuild:
        """Build ``job``'s template unless another build holds it, it is ready, its last
        build failed lately, or its image changed since the run that asked for it."""
        with self._busy(), try_exclusive(self._lock(job.name)) as free:
            if not free:
                return TemplateBuild(
                    template=job.name, outcome="skipped", reason="another build holds it"
                )
            template = self._store.get_vm(job.name)
            if template is not None and template.snapshot is not None:
                return TemplateBuild(template=job.name, outcome="ready", reason="already built")
            failed = self._failure(job.name)
            image = self._store.get_image(*parse_image_ref(job.image))
            if failed is not None or image is None or image_fingerprint(image) != job.fingerprint:
                reason = failed or f"image {job.image} changed or is gone"
                return TemplateBuild(template=job.name, outcome="skipped", reason=reason)
            if template is not None:  # half-built by a build that failed or died
                self._discard(job.name)
            self._retire_outdated(image)
            self._sweep_marks(keep=job.name)
            self._let_boot_first(job)
            started = time.monotonic()
            try:
                self._build(job)
            except (readiness.Interrupted, InsufficientCapacity):
                raise  # waiting can help: the next run tries again
            except Exception as error:
                self._record_failure(job.name, error)
                raise
        seconds = time.monotonic() - started
        reason = f"ready once {said(job.signal)}, built in {seconds:.1f}s"
        return TemplateBuild(template=job.name, outcome="built", reason=reason)

    def shutdown(self, timeout: float = 60) -> bool:
        """Call off builds under way and wait until they have deleted their half-built
        templates (True), at most ``timeout`` seconds; no build starts after."""
        self._stop.set()
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        with self._idle:
            if self._stop.is_set():
                raise readiness.Interrupted("meda is shutting down: no template is built")
            self._active += 1
        try:
            yield
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _build(self, job: TemplateJob) -> None:
        """Create, boot and snapshot ``job``'s template; discard it if any step fails."""
        name = job.name
        log.info("building template %s of %s (ready once %s)", name, job.image, said(job.signal))
        create = CreateVMRequest(
            name=name,
            image=job.image,
            memory=job.memory,
            cpus=job.cpus,
            disk=job.disk,
            user_data=job.user_data,
            template=True,
        )
        self._vms.create(create)
        try:
            self._boot_and_snapshot(job)
        except BaseException as error:
            called_off = isinstance(error, readiness.Interrupted)  # shutdown: nothing wrong
            log.log(
                logging.INFO if called_off else logging.WARNING,
                "template %s of %s not built: %s",
                name,
                job.image,
                error,
            )
            self._discard(name)
            raise

    def _boot_and_snapshot(self, job: TemplateJob) -> None:
        """Boot the created template, wait until it is ready, snapshot it, power it off."""
        name = job.name
        if self._stop.is_set():
            raise readiness.Interrupted(f"meda is shutting down: template {name} is not built")
        seconds = self._wait_ready(self._vms.start(name), job.signal)
        log.info("template %s of %s ready after %.1fs", name, job.image, seconds)
        self._snapshots.snapshot(name)
        self._vms.stop(name, timeout=0)  # its snapshot is what counts now
        self._vms.record_image_fingerprint(name, job.fingerprint)

    def _let_boot_first(self, job: TemplateJob) -> None:
        """Wait until the run's own guest answers (or will not): two guests booting at once
        on a small host would slow the one its caller waits for."""
        vm = self._store.get_vm(job.after) if job.after else None
        if vm is None or vm.ip is None or vm.state != VMState.RUNNING:
            return
        try:
            self._wait_ready(vm, job.signal)
        except MedaError as error:  # its guest may differ (user data): build anyway
            log.info(
                "building template %s although VM %s did not answer: %s", job.name, vm.name, error
            )

    def _wait_ready(self, vm: VM, signal: Signal) -> float:
        """Seconds until the running ``vm`` is ready by ``signal`` (MEDA_RUN_READY_TIMEOUT)."""
        timeout = self._settings.run_ready_timeout
        if signal == "agent":
            answers = functools.partial(self._guest.answers, vm.name)
            return readiness.wait_until_agent(answers, vm.name, timeout, self._stop)
        assert vm.ip is not None
        return readiness.wait_until_ready(self._settings.netns, vm.ip, signal, timeout, self._stop)

    def _discard(self, name: str) -> None:
        """Delete a template that is not (fully) built, powering it off without waiting."""
        vm = self._store.get_vm(name)
        if vm is not None and vm.state == VMState.RUNNING:
            with contextlib.suppress(Exception):
                self._vms.stop(name, timeout=0)
        self._vms.delete(name)

    def _retire_outdated(self, image: Image) -> None:
        """Delete templates of an earlier version of ``image`` that no clone needs."""
        current = image_fingerprint(image)
        for vm in self._vms.list():
            if (
                vm.name.startswith(TEMPLATE_PREFIX)
                and vm.image == image.ref
                and vm.state == VMState.STOPPED
                and (
                    vm.image_fingerprint not in (None, current)
                    or (vm.snapshot is not None and vm.snapshot.layout != DEVICE_LAYOUT)
                )
                and not any(c.clone_of == vm.name for c in self._store.list_vms())
            ):
                log.info("retiring template %s: its image or its devices changed", vm.name)
                self._vms.delete(vm.name)

    def _sweep_marks(self, keep: str) -> None:
        """Remove the files of builds whose template is gone (deleted, or discarded and no
        longer remembered as failed); a minute's grace lets a detached builder read its job."""
        folder = self._settings.home / "templates"
        names = {p.name.split(".", 1)[0] for p in folder.glob(f"{TEMPLATE_PREFIX}*")}
        for name in names - {keep}:
            if self._store.get_vm(name) is not None or self._failure(name) is not None:
                continue
            marks = [p for p in folder.glob(f"{name}.*") if p.suffix != ".lock"]
            if any(time.time() - p.stat().st_mtime < 60 for p in marks):
                continue
            with try_exclusive(self._lock(name)) as free:
                if free:
                    for mark in marks:
                        mark.unlink(missing_ok=True)
                    remove_held(self._lock(name))

    # ---- where builds leave their marks ----

    def _lock(self, name: str) -> Path:
        return self._settings.home / "templates" / f"{name}.lock"

    def _failed_file(self, name: str) -> Path:
        return self._settings.home / "templates" / f"{name}.failed"

    def _record_failure(self, name: str, error: BaseException) -> None:
        record = {"error": str(error)[:500], "at": time.time()}
        self._failed_file(name).write_text(json.dumps(record))

    def _failure(self, name: str) -> str | None:
        """Why runs of ``name`` boot cold after its last build failed (None: try again)."""
        path = self._failed_file(name)
        try:
            record = json.loads(path.read_text())
            at, error = float(record["at"]), str(record["error"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # unreadable: as if none was recorded
            return None
        left = at + self._settings.run_template_retry - time.time()
        if left <= 0:
            path.unlink(missing_ok=True)
            return None
        return (
            f"building template {name} failed ({error}); runs of this image and shape "
            f"boot cold for {left:.0f}s more (MEDA_RUN_TEMPLATE_RETRY) or until the "
            "image changes"
        )
