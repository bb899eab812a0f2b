"""A test plugin: QEMU and qcow2 that stop dead at a chosen step, so a test can kill -9
the server there. ``MEDA_TEST_PAUSE_AT`` names the step; the backend writes
``MEDA_HOME/paused-at-<step>`` and sleeps."""

from __future__ import annotations

import os
import time
from pathlib import Path

from meda_core import hookimpl
from meda_core.backends.catalogue import BackendRegistry
from meda_core.backends.roles import DiskInfo, LaunchSpec
from meda_core.models import RuntimeInfo
from meda_qcow2.backend import Qcow2Storage
from meda_qemu.backend import QemuHypervisor


def pause_at(step: str) -> None:
    if os.environ.get("MEDA_TEST_PAUSE_AT") == step:
        home = Path(os.environ["MEDA_HOME"])
        (home / f"paused-at-{step}").write_text(str(os.getpid()))
        time.sleep(600)


class PausingQemu(QemuHypervisor):
    name = "pausing-qemu"
    priority = 0

    def start(self, launch: LaunchSpec) -> RuntimeInfo:
        runtime = super().start(launch)
        pause_at("after-start")
        return runtime


class PausingQcow2(Qcow2Storage):
    name = "pausing-qcow2"
    priority = 0

    def create_disk(
        self, dest: Path, size: int, base: Path | None = None, base_format: str | None = None
    ) -> DiskInfo:
        info = super().create_disk(dest, size, base, base_format)
        pause_at("after-create-disk")
        return info

    def delete_disk(self, path: Path) -> None:
        pause_at("before-delete-disk")
        super().delete_disk(path)


@hookimpl
def meda_register_backends(registry: BackendRegistry) -> None:
    registry.add(PausingQemu)
    registry.add(PausingQcow2)
