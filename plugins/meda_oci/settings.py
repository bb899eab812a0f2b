"""The oci plugin's settings (``MEDA_OCI_*``) and registry credentials (``MEDA_REGISTRY_*``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024
GiB = 1024 * MiB
MAX_CHUNK_SIZE = GiB  # a pushed chunk is read whole; a pulled one must say at most this


class OciSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDA_OCI_", extra="ignore")

    chunk_size: int = Field(64 * MiB, ge=MiB, le=MAX_CHUNK_SIZE, description="Disk chunk size")
    zstd_level: int = Field(3, ge=1, le=19)
    concurrency: int = Field(4, ge=1, le=32, description="Layers moved at once")
    hold_memory: int = Field(
        256 * MiB,
        ge=0,
        description="Bytes of memory a pull may use to hash the disk's pieces that arrive "
        "ahead of their turn (the chunks run in parallel); beyond it they are read back",
    )
    deadline: float = Field(
        3600.0, gt=0, description="Seconds a whole pull or push may take, however it trickles"
    )
    max_blob_size: int = Field(
        16 * GiB, ge=MiB, description="Largest layer a registry may describe, in bytes"
    )
    max_disk_size: int = Field(
        1024 * GiB, ge=MiB, description="Largest disk a pulled image may unpack to, in bytes"
    )


class Credentials(BaseSettings):
    """From the environment, for the one registry ``host`` names; otherwise docker's config
    and credential helpers (per registry) are used."""

    model_config = SettingsConfigDict(env_prefix="MEDA_REGISTRY_", extra="ignore")

    host: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    token_realms: str = Field(
        "auth.docker.io",
        description="Comma-separated hosts besides a registry's own that may issue its tokens",
    )

    @property
    def given(self) -> bool:
        return self.token is not None or bool(self.username and self.password is not None)

    def for_registry(self, registry: str) -> bool:
        """These credentials belong to ``registry`` (host[:port], case-insensitive)."""
        return self.host is not None and self.host.strip().lower() == registry.lower()

    def realm_hosts(self) -> set[str]:
        return {h.strip().lower() for h in self.token_realms.split(",") if h.strip()}
