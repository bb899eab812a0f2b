"""The oci plugin's settings (``MEDA_OCI_*``) and registry credentials (``MEDA_REGISTRY_*``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class OciSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDA_OCI_", extra="ignore")

    chunk_size: int = Field(64 * 1024 * 1024, ge=1024 * 1024, description="Disk chunk size")
    zstd_level: int = Field(3, ge=1, le=19)
    concurrency: int = Field(4, ge=1, le=32, description="Layers moved at once")


class Credentials(BaseSettings):
    """From the environment; otherwise docker's config and credential helpers are used."""

    model_config = SettingsConfigDict(env_prefix="MEDA_REGISTRY_", extra="ignore")

    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
