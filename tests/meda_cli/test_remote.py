"""The CLI against a meda server (``--url``/``MEDA_URL``) that wants a bearer token."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meda_cli import context
from meda_cli.main import app
from meda_core.errors import NotFound, Unauthorized, VMNotFound
from meda_core.facade import Meda
from meda_core.interface.calls import LocalApi
from meda_core.interface.remote import RemoteApi
from meda_core.models import (
    CreateVMRequest,
    OperationResult,
    PortForwardResult,
    RunRequest,
    VMInfo,
)
from meda_core.testing import namespaces
from meda_core.testing.host import free_port
from tests.conftest import ServeApi

TOKEN = "s3cret-token"
runner = CliRunner()


@pytest.fixture
def server_url(fake_meda: Meda, fake_image: str, serve_api: ServeApi) -> Iterator[str]:
    """``meda serve`` in a thread: the fake backends, a token required."""
    yield serve_api(fake_meda, token=TOKEN)
    context.use_server(None)


def remote(url: str, *args: str, token: str | None = TOKEN) -> tuple[int, str, str]:
    env = {"MEDA_URL": url, "MEDA_API_TOKEN": token or ""}
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_the_cli_drives_a_remote_server(server_url: str, fake_meda: Meda) -> None:
    code, out, err = remote(server_url, "create", "far", "--memory", "256M", "--json")
    assert code == 0, err
    assert OperationResult.model_validate_json(out).message == "Successfully created VM: far"
    assert fake_meda.store.get_vm("far") is not None  # it is the server that made it
    assert remote(server_url, "start", "far")[0] == 0
    info = VMInfo.model_validate_json(remote(server_url, "get", "far", "--json")[1])
    assert info.state == "running" and info.details.memory == "256M"
    code, out, _ = remote(server_url, "port-forward", "far", "18080", "80", "--json")
    assert code == 0 and PortForwardResult.model_validate_json(out).forward.host_port == 18080
    assert "18080" in remote(server_url, "port-forward", "far", "--list")[1]
    assert remote(server_url, "ip", "far")[1].strip() == info.ip
    assert "far" in remote(server_url, "list")[1]
    assert remote(server_url, "delete", "far")[0] == 0
    assert fake_meda.store.get_vm("far") is None


def test_server_errors_keep_their_code_and_exit_code(server_url: str) -> None:
    code, _, err = remote(server_url, "get", "nope", "--json")
    assert code == VMNotFound.exit_code
    assert json.loads(err)["code"] == "VM_NOT_FOUND"
    code, _, err = remote(server_url, "create", "Bad..Name")
    assert code == 2 and "invalid" in err


def test_a_wrong_or_missing_token_is_refused(server_url: str, tmp_path: Path) -> None:
    assert remote(server_url, "list", token="wrong")[0] == Unauthorized.exit_code
    assert remote(server_url, "list", token=None)[0] == Unauthorized.exit_code
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    result = runner.invoke(
        app,
        ["--url", server_url, "--token-file", str(token_file), "list", "--json"],
        env={"MEDA_API_TOKEN": ""},
    )
    assert result.exit_code == 0, result.stderr


def test_host_only_commands_say_so(server_url: str, tmp_path: Path) -> None:
    code, _, err = remote(server_url, "images", "import", "x", "--kernel", str(tmp_path))
    assert code == 2 and "meda host itself" in err


def test_an_unreachable_server_is_a_clear_error() -> None:
    code, _, err = remote(f"http://127.0.0.1:{free_port()}", "list")
    assert code == 5 and "cannot reach the meda server" in err


def test_remote_api_for_programs(server_url: str) -> None:
    api = RemoteApi(server_url, token=TOKEN)
    try:
        assert api.create_vm(CreateVMRequest(name="prog")).vm is not None
        with pytest.raises(VMNotFound):
            api.get_vm("missing")
        assert [vm.name for vm in api.list_vms().vms] == ["prog"]
        assert api.delete_vm("prog").success
        # Long work goes through a background operation, polled to its end.
        ran = api.run_image(RunRequest(image="default", name="ran"))
        assert ran.vm is not None and ran.vm.state == "running"
        assert api.delete_vm("ran").success
    finally:
        api.close()


def test_remote_api_has_the_system_and_operation_calls(server_url: str, fake_meda: Meda) -> None:
    """Health, capacity, plugins and background operations: the same answers as in process."""
    api, local = RemoteApi(server_url, token=TOKEN), LocalApi(fake_meda)
    try:
        assert api.health().version == local.health().version
        assert api.capacity().memory.total == local.capacity().memory.total
        assert api.plugins() == local.plugins()
        assert api.list_operations().count == local.list_operations().count
        with pytest.raises(NotFound):
            api.get_operation("no-such-operation", wait=1.0)
        with pytest.raises(NotFound):
            api.cancel_operation("no-such-operation")
        api.create_vm(CreateVMRequest(name="p"))
        assert api.plan_vm("p") == local.plan_vm("p")
    finally:
        api.close()


@pytest.mark.parametrize("kind", ["local", "remote"])
def test_events_are_a_feed_in_process_and_remote(
    kind: str, server_url: str, fake_meda: Meda
) -> None:
    api = RemoteApi(server_url, token=TOKEN) if kind == "remote" else LocalApi(fake_meda)
    with api.events() as feed:
        api.create_vm(CreateVMRequest(name="watched"))
        api.delete_vm("watched")
        seen = [event["data"]["kind"] for _, event in zip(range(2), feed, strict=False)]
    assert seen == ["created", "deleted"]
    if isinstance(api, RemoteApi):
        api.close()


def test_a_server_that_never_answers_is_given_up_on(netns: str) -> None:
    """Connections dropped on the way (a firewall, a host gone): a clear error within the
    connect timeout, not a wait of minutes."""
    namespaces.run_in(netns, "ip", "link", "set", "lo", "up")
    rules = (
        "add table ip meda-test; add chain ip meda-test out { type filter hook output "
        "priority 0; }; add rule ip meda-test out tcp dport 7 drop"
    )
    subprocess.run(["ip", "netns", "exec", netns, "nft", rules], check=True)
    try:
        started = time.monotonic()
        result = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                netns,
                sys.executable,
                "-m",
                "meda_cli.main",
                "--url",
                "http://127.0.0.1:7",
                "list",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        seconds = time.monotonic() - started
    finally:
        subprocess.run(
            ["ip", "netns", "exec", netns, "nft", "delete", "table", "ip", "meda-test"], check=True
        )
    assert result.returncode == 5, result.stderr
    assert "cannot reach the meda server at http://127.0.0.1:7" in result.stderr
    assert seconds < 20  # the connect timeout is 10 s
