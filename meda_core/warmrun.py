"""``run`` on the fast path: clone the image's warm template, building it on first use.

A template is keyed by everything that shapes the guest — the image (its record, so a
re-pulled or re-imported image makes a new one), memory, vCPUs, disk, user data and the
readiness port — so a later caller's resources are never silently replaced by an older
caller's. The first run boots the template cold until its ready port answers, snapshots
it and powers it off; every run then clones it.
"""

from __future__ import annotations

import hashlib
import json
import logging

from meda_core import readiness
from meda_core.backends import DEVICE_LAYOUT
from meda_core.config import Settings
from meda_core.locks import exclusive
from meda_core.models import VM, CreateVMRequest, Image, RunRequest, VMState
from meda_core.selection import BackendSelector
from meda_core.snapshots import SnapshotService
from meda_core.store import StateStore
from meda_core.vms import VMService

log = logging.getLogger(__name__)
TEMPLATE_PREFIX = "tpl-"


def image_fingerprint(image: Image) -> str:
    return hashlib.sha256(image.model_dump_json().encode()).hexdigest()[:16]


def template_name(image: Image, request: RunRequest) -> str:
    shape = {
        "image": image_fingerprint(image), "memory": request.memory, "cpus": request.cpus,
        "disk": request.disk, "user_data": request.user_data, "ready_port": request.ready_port,
        "layout": DEVICE_LAYOUT,  # a template of other devices cannot be restored
    }  # fmt: skip
    key = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
    return f"{TEMPLATE_PREFIX}{key}"


def can_clone(backends: BackendSelector) -> bool:
    """True when the hypervisor snapshots and the network isolates (else: cold runs)."""
    network = backends.network()
    return (
        "snapshot" in backends.hypervisor().capabilities
        and network is not None
        and "isolated" in network.capabilities
    )


class WarmRuns:
    """Templates for ``run``: found, built on first use, retired when their image changes."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        vms: VMService,
        snapshots: SnapshotService,
    ) -> None:
        self._settings = settings
        self._store = store
        self._vms = vms
        self._snapshots = snapshots

    def run(self, image: Image, request: RunRequest) -> VM:
        name = template_name(image, request)
        with exclusive(self._settings.home / "templates" / f"{name}.lock"):
            template = self._store.get_vm(name)
            if template is None or template.snapshot is None:
                if template is not None:  # half-built by a run that failed or died
                    self._vms.delete(name)
                self._retire_outdated(image)
                self._build(name, image, request)
        return self._snapshots.clone(name, request.name)

    def _build(self, name: str, image: Image, request: RunRequest) -> None:
        create = CreateVMRequest(
            name=name, image=image.ref, memory=request.memory, cpus=request.cpus,
            disk=request.disk, user_data=request.user_data, template=True,
        )  # fmt: skip
        self._vms.create(create)
        try:
            vm = self._vms.start(name)
            assert vm.ip is not None
            seconds = readiness.wait_until_ready(
                self._settings.netns, vm.ip, request.ready_port, self._settings.run_ready_timeout
            )
            log.info("template %s of %s ready after %.1fs", name, image.ref, seconds)
            self._snapshots.snapshot(name)
            self._vms.stop(name, timeout=0)  # its snapshot is what counts now
            template = self._store.require_vm(name)
            template.image_fingerprint = image_fingerprint(image)
            self._store.save_vm(template)
        except BaseException:
            self._vms.delete(name)
            raise

    def _retire_outdated(self, image: Image) -> None:
        """Delete templates of an earlier version of ``image`` that no clone needs."""
        current = image_fingerprint(image)
        for vm in self._vms.list():
            if (
                vm.name.startswith(TEMPLATE_PREFIX) and vm.image == image.ref
                and vm.image_fingerprint not in (None, current) and vm.state == VMState.STOPPED
                and not any(c.clone_of == vm.name for c in self._store.list_vms())
            ):  # fmt: skip
                log.info("retiring template %s: its image changed", vm.name)
                self._vms.delete(vm.name)
