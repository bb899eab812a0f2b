"""The plugin's settings (``MEDA_OCI_LAYOUT_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024
GiB = 1024 * MiB


class LayoutSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDA_OCI_LAYOUT_", extra="ignore")

    root: Path | None = Field(
        None,
        description="Folder holding one OCI image layout per repository; "
        "unset: MEDA_HOME/oci-layout",
    )
    max_blob_size: int = Field(
        64 * GiB, ge=MiB, description="Largest blob a layout may describe, in bytes"
    )
