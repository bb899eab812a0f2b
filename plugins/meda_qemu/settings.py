"""The qemu plugin's own settings (``MEDA_QEMU_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


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
    #: what it needs later (saved state, snapshot overlays). Root when unset.
    user: str | None = None
