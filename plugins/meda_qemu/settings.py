"""The qemu plugin's own settings (``MEDA_QEMU_*``)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from meda_core.plugin import BackendUnavailable

#: The account ``MEDA_QEMU_USER=auto`` runs QEMU as, where it exists (scripts/setup.sh
#: makes it).
DEFAULT_USER = "meda-qemu"


class QemuSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDA_QEMU_", extra="ignore")

    binary: str = "qemu-system-x86_64"
    #: ``auto`` boot-tests KVM and falls back to TCG.
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    machine: str = "q35"
    #: Firmware for VMs booted from their disk (``-bios``); QEMU's SeaBIOS when unset.
    firmware: Path | None = None
    #: A kernel to boot-test KVM with when the VM being started has none of its own.
    probe_kernel: Path | None = None
    probe_timeout: float = 20.0
    #: QEMU drops to this user once it has opened its files (``-runas``); meda hands it
    #: what it needs later (saved state, snapshot overlays). ``auto``: the account
    #: ``meda-qemu`` where it exists and meda is root; ``root``: never drop.
    user: str = "auto"

    def qemu_user(self) -> str | None:
        """The account QEMU becomes, or None to stay as meda's own user."""
        if self.user in ("", "root") or os.geteuid() != 0:
            return None
        name = DEFAULT_USER if self.user == "auto" else self.user
        try:
            pwd.getpwnam(name)
        except KeyError:
            if self.user == "auto":
                return None
            raise BackendUnavailable(
                f"MEDA_QEMU_USER names '{name}', which is not an account on this host "
                f"(make one: useradd --system --no-create-home --shell /usr/sbin/nologin {name})"
            ) from None
        return name
