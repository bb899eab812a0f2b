"""``meda mcp``: the stdio MCP server, spawned as a subprocess and driven by the MCP SDK's
client, acting on this host (the fake backends) or on a server through ``--url``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from meda_core.facade import Meda
from meda_core.testing.host import free_port
from meda_core.testing.installs import install_entry_points
from tests.conftest import ServeApi

pytest.importorskip("mcp")

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

T = TypeVar("T")
TOKEN = "s" * 32
TOOLS = {
    "list_vms",
    "get_vm",
    "run",
    "create_vm",
    "start_vm",
    "stop_vm",
    "delete_vm",
    "exec",
    "put_file",
    "get_file",
    "console",
}


@pytest.fixture
def fake_env(fake_meda: Meda, fake_image: str, tmp_path: Path) -> dict[str, str]:
    """The environment in which a ``meda`` subprocess acts on the fake meda's home with
    the fake backends."""
    site = install_entry_points(tmp_path / "site", "meda-fake", {"fake": "meda_fake_plugin"})
    (site / "meda_fake_plugin.py").write_text(
        "from meda_core.testing.fakes import FakePlugin\n"
        "meda_register_backends = FakePlugin().meda_register_backends\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("MEDA_")}
    repo = Path(__file__).resolve().parents[2]
    env.update(
        PYTHONPATH=os.pathsep.join([str(site), str(repo)]),
        MEDA_HOME=str(fake_meda.settings.home),
        MEDA_HYPERVISOR="fake",
        MEDA_STORAGE="fake",
        MEDA_NETWORK="fake",
        MEDA_REGISTRY="fake",
        MEDA_AGENT="fake",
    )
    return env


def _stdio(env: dict[str, str], call: Callable[[Client], Awaitable[T]], *args: str) -> T:
    """``call`` on an SDK client of ``meda [args] mcp``, spawned with ``env``."""
    command = StdioServerParameters(
        command=sys.executable, args=["-m", "meda_cli.main", *args, "mcp"], env=env
    )

    async def run() -> T:
        async with Client(command, read_timeout_seconds=60) as client:
            return await call(client)

    return asyncio.run(run())


async def _lifecycle(client: Client) -> dict[str, Any]:
    """List the tools, then create, list, exec in, copy into, run and delete VMs."""
    seen: dict[str, Any] = {"tools": {tool.name for tool in (await client.list_tools()).tools}}
    for tool, arguments in (
        ("create_vm", {"name": "vm1"}),
        ("start_vm", {"name": "vm1"}),
        ("list_vms", {}),
        ("exec", {"name": "vm1", "command": ["sh", "-c", "echo $X"], "env": {"X": "42"}}),
        ("put_file", {"name": "vm1", "path": "/f", "content": "data"}),
        ("get_file", {"name": "vm1", "path": "/f"}),
        ("create_vm", {"name": "vm1"}),
        ("run", {"image": "default", "name": "r1", "cold": True}),
        ("delete_vm", {"name": "vm1"}),
        ("delete_vm", {"name": "r1"}),
        ("list_vms", {}),
    ):
        result = await client.call_tool(tool, arguments)
        seen.setdefault(tool, []).append((result.is_error, result.structured_content))
    return seen


def _check(seen: dict[str, Any]) -> None:
    assert seen["tools"] == TOOLS
    (failed, created), (conflict, body) = seen["create_vm"]
    assert not failed and created["vm"]["name"] == "vm1"
    assert conflict and body["code"] == "VM_EXISTS"
    (_, listed), (_, emptied) = seen["list_vms"]
    assert [vm["name"] for vm in listed["vms"]] == ["vm1"]
    assert listed["vms"][0]["state"] == "running"
    assert emptied == {"vms": [], "count": 0}
    assert seen["exec"][0][1]["stdout"] == "42\n"
    assert seen["put_file"][0][1]["size"] == 4
    assert seen["get_file"][0][1]["content"] == "data"
    [(failed, ran)] = seen["run"]
    assert not failed and ran["vm"]["name"] == "r1" and ran["run"]["path"] == "cold"
    assert [failed for failed, _ in seen["delete_vm"]] == [False, False]


def test_stdio_on_this_host(fake_env: dict[str, str], fake_meda: Meda) -> None:
    _check(_stdio(fake_env, _lifecycle))
    assert fake_meda.vms.list() == []


def test_stdio_through_a_server(
    fake_env: dict[str, str], fake_meda: Meda, serve_api: ServeApi
) -> None:
    """--url sends every tool to the server, with the token of MEDA_API_TOKEN."""
    url = serve_api(fake_meda, token=TOKEN)
    elsewhere = str(Path(fake_env["MEDA_HOME"]).parent / "elsewhere")  # not the server's
    env = {**fake_env, "MEDA_API_TOKEN": TOKEN, "MEDA_HOME": elsewhere}
    _check(_stdio(env, _lifecycle, "--url", url))


def test_stdio_through_a_server_with_a_wrong_token(
    fake_env: dict[str, str], fake_meda: Meda, serve_api: ServeApi
) -> None:
    url = serve_api(fake_meda, token=TOKEN)

    async def call(client: Client) -> Any:
        return await client.call_tool("list_vms", {})

    result = _stdio({**fake_env, "MEDA_API_TOKEN": "wrong"}, call, "--url", url)
    assert result.is_error
    assert result.structured_content["code"] == "UNAUTHORIZED"


def test_without_the_sdk_it_says_how_to_install_it(
    fake_env: dict[str, str], tmp_path: Path
) -> None:
    blocker = tmp_path / "nosdk"
    blocker.mkdir()
    (blocker / "mcp.py").write_text("raise ImportError('no module named mcp')\n")
    env = {**fake_env, "PYTHONPATH": os.pathsep.join([str(blocker), fake_env["PYTHONPATH"]])}
    result = subprocess.run(
        [sys.executable, "-m", "meda_cli.main", "mcp"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 5
    assert "pip install 'meda[mcp]'" in result.stderr


@pytest.fixture
def meda_serve(fake_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """``meda serve --require-token`` as a process on the fake backends; its URL."""
    port = free_port()
    argv = [sys.executable, "-m", "meda_cli.main", "serve", "--port", str(port)]
    log = tmp_path / "serve.log"
    env = {**fake_env, "MEDA_API_TOKEN": TOKEN}
    with log.open("ab") as out:
        process = subprocess.Popen([*argv, "--require-token"], env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _answers(url):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/api/v1/health", timeout=2)
    except httpx.TransportError:
        return False
    return True


def test_a_meda_serve_answers_at_mcp(meda_serve: str, fake_env: dict[str, str]) -> None:
    """The SDK's streamable-HTTP client against a real ``meda serve``: the same tools,
    behind the server's token, Host and Origin checks."""

    async def run() -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            transport = streamable_http_client(f"{meda_serve}/mcp", http_client=http)
            async with Client(transport) as client:
                return await _lifecycle(client)

    _check(asyncio.run(run()))
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    accept = {"Accept": "application/json, text/event-stream"}
    for headers, status in (
        ({}, 401),
        ({"Host": "rebound.example"}, 421),
        ({"Origin": "http://evil.example"}, 403),
    ):
        if status != 401:
            headers["Authorization"] = f"Bearer {TOKEN}"
        answer = httpx.post(f"{meda_serve}/mcp", json=ping, headers={**accept, **headers})
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]


def test_stdio_finds_the_token_in_server_json(meda_serve: str, fake_env: dict[str, str]) -> None:
    """Like every command: --url names the server, its server.json gives the token."""

    async def call(client: Client) -> Any:
        return await client.call_tool("list_vms", {})

    env = {k: v for k, v in fake_env.items() if k != "MEDA_API_TOKEN"}
    result = _stdio(env, call, "--url", meda_serve)
    assert not result.is_error, result.structured_content
    assert result.structured_content == {"vms": [], "count": 0}
