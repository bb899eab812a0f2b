"""Which registries meda talks plain HTTP to: loopback only, by literal address or localhost."""

from __future__ import annotations

import pytest

from meda_core.inputs.references import parse_reference


@pytest.mark.parametrize(
    "registry", ["localhost:5000", "LOCALHOST:5000", "127.0.0.1:5000", "127.9.8.7", "localhost"]
)
def test_loopback_registries_use_plain_http(registry: str) -> None:
    assert parse_reference(f"{registry}/meda/img:v1").insecure


@pytest.mark.parametrize(
    "registry",
    [
        "127.attacker.example",  # a DNS name that only starts like a loopback address
        "127.attacker.example:5000",
        "127.0.0.1.nip.io:443",
        "localhost.attacker.example",
        "ghcr.io",
        "10.0.0.1:5000",
    ],
)
def test_names_that_look_like_loopback_use_https(registry: str) -> None:
    assert not parse_reference(f"{registry}/meda/img:v1").insecure


def test_host_drops_only_the_port() -> None:
    assert parse_reference("registry.example:5000/a/b:v1").host == "registry.example"
    assert parse_reference("registry.example/a/b:v1").host == "registry.example"
