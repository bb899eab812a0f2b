"""``/mcp``: meda's MCP tools over streamable HTTP, driven by the MCP SDK's own client, behind
the API's token, Host and Origin checks."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from meda_core.facade import Meda
from tests.conftest import ServeApi
from tests.meda_cli.test_mcp import TOOLS

mcp = pytest.importorskip("mcp")
httpx2 = pytest.importorskip("httpx2")

from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402
from mcp.types import CallToolResult  # noqa: E402

TOKEN = "t" * 32
T = TypeVar("T")
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


def _session(url: str, token: str | None, call: Callable[[Client], Awaitable[T]]) -> T:
    """``call`` on an SDK client connected to ``url``/mcp with ``token``."""

    async def run() -> T:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            transport = streamable_http_client(f"{url}/mcp", http_client=http)
            async with Client(transport) as client:
                return await call(client)

    return asyncio.run(run())


def _tool(url: str, name: str, arguments: dict[str, Any]) -> CallToolResult:
    async def call(client: Client) -> CallToolResult:
        return await client.call_tool(name, arguments)

    return _session(url, TOKEN, call)


@pytest.fixture
def url(fake_meda: Meda, fake_image: str, serve_api: ServeApi) -> str:
    return serve_api(fake_meda, token=TOKEN)


def test_tools_are_listed_with_their_models(url: str) -> None:
    async def call(client: Client) -> Any:
        return await client.list_tools()

    tools = {tool.name: tool for tool in _session(url, TOKEN, call).tools}
    assert set(tools) == TOOLS
    assert tools["get_vm"].output_schema is not None
    assert tools["get_vm"].output_schema["title"] == "VMInfo"
    assert tools["exec"].input_schema["required"] == ["command", "name"]
    assert tools["list_vms"].annotations is not None
    assert tools["list_vms"].annotations.read_only_hint is True
    assert tools["delete_vm"].annotations is not None
    assert tools["delete_vm"].annotations.destructive_hint is True


def test_a_vm_through_its_life(url: str) -> None:
    created = _tool(url, "create_vm", {"name": "vm1", "labels": {"by": "mcp"}})
    assert not created.is_error, created.content
    assert created.structured_content is not None
    assert created.structured_content["vm"]["name"] == "vm1"
    started = _tool(url, "start_vm", {"name": "vm1"})
    assert started.structured_content is not None
    assert started.structured_content["vm"]["state"] == "running"
    listed = _tool(url, "list_vms", {"label": ["by=mcp"]})
    assert listed.structured_content is not None
    assert [vm["name"] for vm in listed.structured_content["vms"]] == ["vm1"]
    assert json.loads(listed.content[0].text) == listed.structured_content  # type: ignore[union-attr]
    got = _tool(url, "get_vm", {"name": "vm1"})
    assert got.structured_content is not None
    assert got.structured_content["labels"] == {"by": "mcp"}
    stopped = _tool(url, "stop_vm", {"name": "vm1", "force": True})
    assert stopped.structured_content is not None
    assert stopped.structured_content["vm"]["state"] == "stopped"
    assert not _tool(url, "delete_vm", {"name": "vm1"}).is_error
    gone = _tool(url, "get_vm", {"name": "vm1"})
    assert gone.is_error
    assert gone.structured_content is not None
    assert gone.structured_content["code"] == "VM_NOT_FOUND"


def test_exec_files_and_console_through_the_agent(url: str) -> None:
    _tool(url, "create_vm", {"name": "vm1"})
    _tool(url, "start_vm", {"name": "vm1"})
    ran = _tool(url, "exec", {"name": "vm1", "command": ["cat"], "stdin": "hello"})
    assert ran.structured_content == {
        "exit_code": 0,
        "signal": None,
        "stdout": "hello",
        "stderr": "",
        "truncated": False,
    }
    put = _tool(url, "put_file", {"name": "vm1", "path": "/a.txt", "content": "héllo\n"})
    assert not put.is_error, put.structured_content
    assert put.structured_content["size"] == len("héllo\n".encode())
    got = _tool(url, "get_file", {"name": "vm1", "path": "/a.txt"})
    assert got.structured_content is not None
    assert got.structured_content["content"] == "héllo\n"
    binary = base64.b64encode(b"\xff\x00\xfe").decode()
    _tool(url, "put_file", {"name": "vm1", "path": "/b", "content": binary, "encoding": "base64"})
    as_text = _tool(url, "get_file", {"name": "vm1", "path": "/b"})
    assert as_text.is_error
    assert as_text.structured_content is not None
    assert as_text.structured_content["code"] == "INVALID_REQUEST"
    assert "encoding=base64" in as_text.structured_content["error"]
    raw = _tool(url, "get_file", {"name": "vm1", "path": "/b", "encoding": "base64"})
    assert raw.structured_content is not None
    assert raw.structured_content["content"] == binary
    console = _tool(url, "console", {"name": "vm1"})
    assert console.structured_content is not None
    assert "fake VM vm1 booted" in console.structured_content["text"]


@pytest.mark.parametrize(
    ("tool", "arguments", "code"),
    [
        ("get_vm", {"name": "Bad Name"}, "INVALID_REQUEST"),
        ("get_vm", {"name": "vm1", "extra": 1}, "INVALID_REQUEST"),
        ("exec", {"name": "vm1", "command": []}, "INVALID_REQUEST"),
        (
            "put_file",
            {"name": "vm1", "path": "/x", "content": "%%", "encoding": "base64"},
            "INVALID_REQUEST",
        ),
        ("console", {"name": "vm1", "tail": -1}, "INVALID_REQUEST"),
        ("no_such_tool", {}, "INVALID_REQUEST"),
        ("start_vm", {"name": "absent"}, "VM_NOT_FOUND"),
    ],
)
def test_bad_calls_are_tool_errors_with_the_error_body(
    url: str, fake_meda: Meda, tool: str, arguments: dict[str, Any], code: str
) -> None:
    result = _tool(url, tool, arguments)
    assert result.is_error
    body = result.structured_content
    assert body is not None
    assert body["code"] == code
    assert body["error"] == body["details"]["message"]
    assert json.loads(result.content[0].text) == body  # type: ignore[union-attr]
    assert fake_meda.vms.list() == []


def _post(url: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **headers})


def test_without_the_token_it_is_401(url: str) -> None:
    answer = _post(url)
    assert answer.status_code == 401
    assert answer.json()["code"] == "UNAUTHORIZED"
    assert _post(url, Authorization="Bearer wrong").status_code == 401
    assert _post(url, Authorization=f"Bearer {TOKEN}").status_code == 200


def test_a_foreign_host_is_refused(url: str) -> None:
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1."""
    answer = _post(url, Host="evil.example:8080", Authorization=f"Bearer {TOKEN}")
    assert answer.status_code == 421
    assert answer.json()["code"] == "MISDIRECTED_REQUEST"


@pytest.mark.parametrize("origin", ["http://evil.example", "null"])
def test_a_foreign_origin_is_refused(url: str, origin: str) -> None:
    answer = _post(url, Origin=origin, Authorization=f"Bearer {TOKEN}")
    assert answer.status_code == 403
    assert answer.json()["code"] == "FORBIDDEN"


def test_the_sdk_client_is_refused_without_the_token(url: str) -> None:
    async def call(client: Client) -> Any:
        return await client.list_tools()

    with pytest.raises(BaseException) as raised:
        _session(url, None, call)
    # The SDK reports an HTTP error as a generic one; test_without_the_token_it_is_401
    # shows what the server answers.
    assert any(isinstance(error, MCPError) for error in _leaves(raised.value))


def _leaves(error: BaseException) -> list[BaseException]:
    """The errors in ``error`` (anyio's task groups nest them in exception groups)."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def test_without_a_token_configured_it_answers(
    fake_meda: Meda, fake_image: str, serve_api: ServeApi
) -> None:
    open_url = serve_api(fake_meda)

    async def call(client: Client) -> Any:
        return await client.call_tool("list_vms", {})

    result = _session(open_url, None, call)
    assert result.structured_content == {"vms": [], "count": 0}


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
def test_only_posts_are_served(url: str, method: str) -> None:
    """Stateless: no event stream a GET would hold open, no session to delete."""
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {TOKEN}"}
    answer = httpx.request(method, f"{url}/mcp", headers=headers, timeout=10)
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert answer.json()["code"] == "METHOD_NOT_ALLOWED"


def test_without_the_sdk_it_is_503_saying_how_to_install_it(
    fake_meda: Meda, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from meda_api import create_app
    from meda_api import mcp as served

    monkeypatch.setattr(served, "sdk_missing", lambda: f"no MCP SDK: {served.INSTALL}")
    with TestClient(create_app(fake_meda), base_url="http://localhost") as client:
        answer = client.post("/mcp", json=INITIALIZE, headers=MCP_HEADERS)
    assert answer.status_code == 503
    assert answer.json()["code"] == "BACKEND_UNAVAILABLE"
    assert "pip install 'meda[mcp]'" in answer.json()["error"]
