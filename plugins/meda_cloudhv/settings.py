"""The cloud-hypervisor plugin's settings (``MEDA_CH_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class CloudHypervisorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDA_CH_", extra="ignore")

    binary: str = "cloud-hypervisor"
    #: Firmware for VMs booted from their disk (CLOUDHV.fd or rust-hypervisor-firmware).
    firmware: Path | None = None
    start_timeout: float = 10.0
