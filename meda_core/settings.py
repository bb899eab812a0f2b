"""Settings from the environment (``MEDA_*``), with the defaults documented in the README."""

from __future__ import annotations

import os
from ipaddress import IPv4Address
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    """``~/.meda``; root may use /var/lib/meda by setting ``MEDA_HOME``."""
    return Path(os.path.expanduser("~")) / ".meda"


class Settings(BaseSettings):
    """Everything meda reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="MEDA_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    hypervisor: str = "auto"
    network: str = "auto"
    storage: str = "auto"
    registry: str = "auto"
    agent: str = "auto"
    default_image: str = Field("default:latest", description="Image for VMs created without one")
    stop_timeout: float = Field(30.0, gt=0, description="Seconds a guest gets to power off")
    run_ready_timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds a run's template gets to answer on its ready port (or its agent)",
    )
    run_template_retry: float = Field(
        3600.0, ge=0, description="Seconds runs boot cold after a template build failed"
    )
    reconcile_interval: float = Field(
        5.0,
        gt=0,
        description="Seconds between a server's checks of every VM against the host (VM "
        "processes it can watch are seen at once)",
    )
    event_journal: int = Field(
        10000, ge=100, description="Events kept for replay (GET /events?since=, Last-Event-ID)"
    )
    restart_backoff_max: float = Field(
        60.0, gt=0, description="Longest wait, in seconds, before a restart policy starts a VM"
    )
    console_max_bytes: int = Field(
        8 * 1024 * 1024,
        ge=4096,
        description="Bytes a VM's console.log may reach before it is rotated to console.log.1 "
        "(so at most about twice this on disk)",
    )
    netns: str | None = Field(
        None, description="Network namespace for meda's whole network and its VMs"
    )
    netns_create: bool = Field(
        False, description="Create MEDA_NETNS when missing, and delete it with the network"
    )
    allow_privileged_ports: bool = Field(
        False, description="Allow forwarding host ports below 1024"
    )
    forward_address: IPv4Address = Field(
        IPv4Address("0.0.0.0"),
        description="IPv4 address port forwards listen on in meda's own network namespace "
        "(0.0.0.0: every address)",
    )
    allowed_hosts: str = Field(
        "", description="Comma-separated names the API answers to beyond loopback (Host header)"
    )
    allow_plain_http: bool = Field(
        False, description="Let a server beyond loopback take its token over plain HTTP"
    )
    reserve_memory: str = Field("512M", description="Host memory VMs may not use")
    reserve_cpus: int = Field(0, ge=0, description="vCPUs held back from VMs")
    cpu_overcommit: int = Field(8, ge=1, description="vCPUs per host CPU")
    reserve_disk: str = Field("1G", description="Free disk under MEDA_HOME kept free")
    max_operations: int = Field(
        32, ge=1, description="Background operations queued or running at once"
    )
    max_waits: int = Field(
        64, ge=1, description="API requests held open at once (operation waits, event streams)"
    )
    max_waits_per_client: int = Field(
        16, ge=1, description="Of those, how many one client (token, else address) may hold"
    )
    idempotency_wait: float = Field(
        300.0,
        gt=0,
        description="Seconds a retry waits for the answer of the request with its "
        "Idempotency-Key still running (409 beyond; the client may retry again)",
    )
    user_data_dirs: str = Field(
        "", description="Colon-separated directories user_data paths may name (none by default)"
    )
    disk_probe_cpu_seconds: int = Field(
        30, ge=1, description="CPU seconds qemu-img gets to read a qcow2 disk meda checks"
    )
    disk_probe_memory: str = Field(
        "1G", description="Address space qemu-img gets to read a qcow2 disk meda checks"
    )
    allowed_registries: str = Field(
        "",
        description="Comma-separated registries (host[:port]) that pulls, pushes and runs may "
        "name; empty: any",
    )
    agent_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds a guest's agent gets to answer before exec and files "
        "give up on it (NO_AGENT)",
    )
    clone_agent_wait: float = Field(
        3.0,
        ge=0,
        description="Seconds a new clone's agent gets to answer before the clone keeps the "
        "identity its seed gives (hostname only); 0: clones are not asked",
    )
    exec_timeout: float = Field(
        600.0, gt=0, description="Seconds a command run by exec may take when it names no timeout"
    )
    exec_output_max: int = Field(
        16 * 1024 * 1024,
        ge=0,
        description="Bytes of output the short form of exec keeps per "
        "stream; beyond, it is cut and flagged",
    )
    exec_sessions_max: int = Field(
        32, ge=1, description="Commands streamed by exec at once on one server"
    )
    file_max_bytes: int = Field(
        1024 * 1024 * 1024,
        ge=0,
        description="Largest body a file upload (or stdin post) may send, and largest file "
        "or tar a download may bring",
    )
    body_idle_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds an upload's (or stdin post's) body may pause before the "
        "request is refused (408)",
    )
    disabled_plugins: str = Field(
        "",
        description="Comma-separated plugin names not to load",
        validation_alias=AliasChoices("MEDA_DISABLE_PLUGINS", "MEDA_DISABLED_PLUGINS"),
    )

    def role_choice(self, role: str) -> str:
        value: str = getattr(self, role)
        return value

    @property
    def vms_dir(self) -> Path:
        return self.home / "vms"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def db_path(self) -> Path:
        return self.home / "state.db"

    def allowed_host_list(self) -> list[str]:
        return [name.strip() for name in self.allowed_hosts.split(",") if name.strip()]

    def user_data_dir_list(self) -> list[Path]:
        return [Path(d) for d in self.user_data_dirs.split(":") if d.strip()]

    def allowed_registry_set(self) -> frozenset[str]:
        return frozenset(r.strip().lower() for r in self.allowed_registries.split(",") if r.strip())

    def disabled(self) -> set[str]:
        return {name.strip() for name in self.disabled_plugins.split(",") if name.strip()}
