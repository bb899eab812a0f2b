from __future__ import annotations

import pytest

from meda_core.backends.roles import BackendContext
from meda_core.testing.conformance import NetworkConformance
from meda_usernet import UserNetwork


class TestUserNetworkConformance(NetworkConformance):
    @pytest.fixture
    def backend(self, backend_context: BackendContext) -> UserNetwork:
        return UserNetwork(backend_context)


def test_guest_gets_slirps_address(backend_context: BackendContext) -> None:
    attachment = UserNetwork(backend_context).allocate("vm")
    assert attachment.ip == "10.0.2.15" and attachment.tap is None
