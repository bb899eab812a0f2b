"""The docs say what the code does: every hook and argument, every setting, every backend
method, and links that lead somewhere (as datasette checks its plugin hooks)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from meda_cloudhv.settings import CloudHypervisorSettings
from meda_core.backends import hookspecs
from meda_core.backends.roles import (
    AgentBackend,
    HypervisorBackend,
    NetworkBackend,
    RegistryBackend,
    StorageBackend,
)
from meda_core.settings import Settings
from meda_oci.settings import Credentials, OciSettings
from meda_qemu.settings import QemuSettings
from meda_tapbridge.settings import BridgeSettings

DOCS = Path(__file__).resolve().parent.parent / "docs"
#: Variables read outside a settings class (the server's token, the CLI's server, ...).
OTHER_VARIABLES = (
    "MEDA_API_TOKEN",
    "MEDA_URL",
    "MEDA_API_TOKEN_FILE",
    "MEDA_CORS_ORIGINS",
    "MEDA_REGISTRY_USERNAME",
    "MEDA_REGISTRY_PASSWORD",
    "MEDA_REGISTRY_TOKEN",
    "MEDA_QEMU_IMG",
    "MEDA_RATE_LIMIT",
    "MEDA_LOG_LEVEL",
    "MEDA_LOG",
    "MEDA_LOG_FORMAT",
    "MEDA_CA_FILE",
    "MEDA_READ_RATE_LIMIT",
)


def _hooks() -> list[tuple[str, list[str]]]:
    return [
        (name, list(inspect.signature(function).parameters))
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("meda_")
    ]


@pytest.mark.parametrize(("hook", "arguments"), _hooks())
def test_every_hook_and_argument_is_documented(hook: str, arguments: list[str]) -> None:
    text = (DOCS / "hooks.md").read_text()
    assert f"## {hook}({', '.join(arguments)})" in text, f"{hook} is not in docs/hooks.md"
    for argument in arguments:
        assert f"- `{argument}`" in text, f"{hook}'s argument {argument} is undocumented"


def _variables(settings: type[BaseSettings]) -> list[str]:
    prefix = settings.model_config.get("env_prefix", "")
    return [f"{prefix}{name.upper()}" for name in settings.model_fields]


SETTINGS = (
    Settings,
    QemuSettings,
    OciSettings,
    Credentials,
    BridgeSettings,
    CloudHypervisorSettings,
)


@pytest.mark.parametrize(
    "variable", [v for s in SETTINGS for v in _variables(s)] + list(OTHER_VARIABLES)
)
def test_every_setting_is_documented(variable: str) -> None:
    text = (DOCS / "configuration.md").read_text()
    documented = {*re.findall(r"`(MEDA_[A-Z0-9_]+)`", text)}
    aliases = {"MEDA_DISABLED_PLUGINS": "MEDA_DISABLE_PLUGINS"}
    assert variable in documented or aliases.get(variable) in documented, variable


@pytest.mark.parametrize(
    "base", [HypervisorBackend, StorageBackend, NetworkBackend, RegistryBackend, AgentBackend]
)
def test_every_backend_method_is_documented(base: type) -> None:
    text = (DOCS / "backends.md").read_text()
    methods = [
        name
        for name, member in vars(base).items()
        if inspect.isfunction(member) and not name.startswith("_")
    ]
    for method in methods:
        assert f"`{method}" in text, f"{base.__name__}.{method} is not in docs/backends.md"


def test_links_between_pages_lead_somewhere() -> None:
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (DOCS / target).exists(), f"{page.name} links to missing {target}"
