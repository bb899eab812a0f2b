"""MCP against a real guest: the SDK's clients drive ``meda serve``'s ``/mcp`` and ``meda mcp
--url`` to boot the test guest, run a command and copy a file through its agent, read its
console and delete it."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import pytest

from meda_core.testing.guest import BOOT_MARKER
from tests.integration.conftest import Server

pytest.importorskip("mcp")

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

pytestmark = pytest.mark.vm

GUEST = "mcp-vm"


async def _call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result: CallToolResult = await client.call_tool(tool, arguments)
    assert not result.is_error, result.structured_content
    content: dict[str, Any] = result.structured_content or {}
    return content


async def _agent_answers(client: Client) -> None:
    """Once the guest has booted: NO_AGENT until then."""
    deadline = time.monotonic() + 180
    while True:
        result = await client.call_tool("exec", {"name": GUEST, "command": ["true"]})
        if not result.is_error:
            return
        assert result.structured_content is not None
        assert result.structured_content["code"] == "NO_AGENT", result.structured_content
        assert time.monotonic() < deadline, "the guest's agent never answered"
        await asyncio.sleep(1)


async def _through_the_guest(client: Client) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    created = await _call(client, "create_vm", name=GUEST, memory="128M")
    seen["created"] = created["vm"]["state"]
    seen["started"] = (await _call(client, "start_vm", name=GUEST))["vm"]["state"]
    await _agent_answers(client)
    seen["uname"] = await _call(client, "exec", name=GUEST, command=["uname", "-s"])
    content = "written over MCP\n"
    await _call(client, "put_file", name=GUEST, path="/mcp.txt", content=content)
    seen["file"] = (await _call(client, "get_file", name=GUEST, path="/mcp.txt"))["content"]
    seen["console"] = (await _call(client, "console", name=GUEST, tail=10_000))["text"]
    return seen


def test_a_guest_through_mcp(server: Server) -> None:
    base = server.url.removesuffix("/api/v1")

    async def over_http() -> dict[str, Any]:
        async with httpx2.AsyncClient(headers=server.auth, timeout=300) as http:
            transport = streamable_http_client(f"{base}/mcp", http_client=http)
            async with Client(transport) as client:
                return await _through_the_guest(client)

    seen = asyncio.run(over_http())
    assert seen["created"] == "stopped" and seen["started"] == "running"
    assert seen["uname"]["exit_code"] == 0 and seen["uname"]["stdout"] == "Linux\n"
    assert seen["file"] == "written over MCP\n"
    assert BOOT_MARKER in seen["console"]

    async def over_stdio() -> dict[str, Any]:
        command = StdioServerParameters(
            command=sys.executable,
            args=["-m", "meda_cli.main", "--url", base, "mcp"],
            env=server.env,
        )
        async with Client(command, read_timeout_seconds=120) as client:
            listed = await _call(client, "list_vms", state="running")
            await _call(client, "delete_vm", name=GUEST)
            return {"listed": listed, "after": await _call(client, "list_vms")}

    done = asyncio.run(over_stdio())
    assert [vm["name"] for vm in done["listed"]["vms"]] == [GUEST]
    assert done["after"] == {"vms": [], "count": 0}
