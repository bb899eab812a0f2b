"""The fake backends are the conformance suites' reference: they must pass them."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from meda_core.backends.roles import AgentChannel, BackendContext, LaunchSpec
from meda_core.inputs.references import parse_reference
from meda_core.models import VMSpec
from meda_core.testing.conformance import (
    AgentConformance,
    HypervisorConformance,
    NetworkConformance,
    RegistryConformance,
    StorageConformance,
)
from meda_core.testing.fakeagent import scratch_root
from meda_core.testing.fakes import (
    FakeAgent,
    FakeHypervisor,
    FakeNetwork,
    FakeRegistry,
    FakeStorage,
)


class TestFakeStorage(StorageConformance):
    @pytest.fixture
    def backend(self, backend_context: BackendContext) -> FakeStorage:
        return FakeStorage(backend_context)


class TestFakeHypervisor(HypervisorConformance):
    @pytest.fixture
    def backend(self, backend_context: BackendContext) -> FakeHypervisor:
        return FakeHypervisor(backend_context)

    @pytest.fixture
    def launch(self, tmp_path: Path):  # type: ignore[no-untyped-def]
        def make(name: str) -> LaunchSpec:
            vm_dir = tmp_path / name
            vm_dir.mkdir()
            (vm_dir / "disk").write_bytes(b"")
            return LaunchSpec(
                name=name,
                uuid=str(uuid.uuid4()),
                vm_dir=vm_dir,
                spec=VMSpec(),
                disk=vm_dir / "disk",
                disk_format="raw",
                console_log=vm_dir / "console.log",
            )

        return make


class TestFakeNetwork(NetworkConformance):
    @pytest.fixture
    def backend(self, backend_context: BackendContext) -> FakeNetwork:
        return FakeNetwork(backend_context)


class TestFakeRegistry(RegistryConformance):
    @pytest.fixture
    def backend(self, backend_context: BackendContext) -> FakeRegistry:
        return FakeRegistry(backend_context)

    @pytest.fixture
    def reference(self):  # type: ignore[no-untyped-def]
        return lambda tag: parse_reference(f"127.0.0.1:1/test/image:{tag}")


class TestFakeAgent(AgentConformance):
    @pytest.fixture
    def backend(self, backend_context: BackendContext) -> FakeAgent:
        return FakeAgent(backend_context)

    @pytest.fixture
    def channel(self, tmp_path: Path) -> AgentChannel:
        (tmp_path / "agent.sock").touch()
        return AgentChannel(tmp_path / "agent.sock")

    @pytest.fixture
    def writable_dir(self, channel: AgentChannel) -> str:
        (scratch_root(channel) / "tmp").mkdir()
        return "/tmp"
