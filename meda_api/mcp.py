"""meda's MCP server (the MCP Python SDK): its tools over stdio (``meda mcp``) and at ``/mcp``.

The tools are :data:`meda_core.interface.mcp.TOOLS`; each answers with its result model as
structured content, or with an MCP tool error carrying meda's error body. The SDK is an
optional dependency (``meda[mcp]``): this module is imported only by ``meda mcp`` and by
:func:`mount`, which answers 503 at ``/mcp`` without it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from meda_api.observability import request_id
from meda_api.ratelimit import client_of
from meda_api.security import refuse
from meda_core import __version__
from meda_core.errors import BackendUnavailable, InvalidRequest, MedaError
from meda_core.interface.mcp import TOOLS, Tool
from meda_core.interface.table import MedaApi
from meda_core.vms.guest import caller

if TYPE_CHECKING:
    from mcp.server import Server, ServerRequestContext
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.types import CallToolRequestParams, CallToolResult, ListToolsResult

log = logging.getLogger(__name__)
PATH = "/mcp"
#: Seconds a request that comes before the SDK is loaded waits for it.
STARTUP_WAIT = 30.0
INSTALL = "pip install 'meda[mcp]'"
INSTRUCTIONS = (
    "meda runs micro-VMs. run starts one from an image; exec, put_file and get_file work "
    "in a running VM through its agent; console shows its serial log. Errors carry meda's "
    "error body: {error, code, details}."
)
#: Who called, from a tool call's request context (None: the process's own user).
Identify = Callable[[Any], str | None]


def sdk_missing() -> str | None:
    """Why the MCP server cannot run here (the SDK is not installed), or None."""
    try:
        import mcp.server  # noqa: F401
    except ImportError as error:
        return f"the MCP server needs the MCP Python SDK ({error}): {INSTALL}"
    return None


def build_server(api: MedaApi, identify: Identify | None = None) -> Server[Any]:
    """An MCP server whose tools call ``api`` (in this process, or a server's)."""
    from mcp.server import Server
    from mcp.types import ListToolsResult

    tools = {tool.name: tool for tool in TOOLS}
    listed = ListToolsResult(tools=[_describe(tool) for tool in TOOLS])

    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> ListToolsResult:
        return listed

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams
    ) -> CallToolResult:
        tool = tools.get(params.name)
        if tool is None:
            return _failed(InvalidRequest(f"no tool named {params.name[:100]!r}"))
        who = identify(ctx.request) if identify is not None else None
        arguments = params.arguments or {}
        return await anyio.to_thread.run_sync(_call, tool, api, arguments, who)

    return Server(
        "meda",
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        get_tool_input_schema=lambda name: _input_schema(tools.get(name)),
    )


def _describe(tool: Tool) -> Any:
    from mcp.types import Tool as McpTool
    from mcp.types import ToolAnnotations

    hints = ToolAnnotations(
        read_only_hint=tool.read_only,
        destructive_hint=tool.destructive,
        open_world_hint=False,
    )
    return McpTool(
        name=tool.name,
        description=tool.description,
        input_schema=tool.arguments.model_json_schema(),
        output_schema=tool.result.model_json_schema(),
        annotations=hints,
    )


def _input_schema(tool: Tool | None) -> dict[str, Any] | None:
    return None if tool is None else tool.arguments.model_json_schema()


def _call(tool: Tool, api: MedaApi, arguments: dict[str, Any], who: str | None) -> CallToolResult:
    """Run ``tool`` (in a worker thread) and make its answer, or its error, a result."""
    if who is not None:
        caller.set(who)  # the guest's audit lines and exec sessions name the client
    try:
        result = tool.run(api, arguments)
    except MedaError as error:
        if error.http_status >= 500:
            log.error("mcp %s: %s: %s", tool.name, error.code, error.message)
        return _failed(error)
    except Exception as error:  # a bug: the client gets the API's answer to one
        log.exception("mcp %s: unhandled error", tool.name)
        return _failed(MedaError(f"internal error: {type(error).__name__}"))
    return _succeeded(result)


def _succeeded(result: BaseModel) -> CallToolResult:
    from mcp.types import CallToolResult, TextContent

    structured = result.model_dump(mode="json")
    text = TextContent(type="text", text=json.dumps(structured))
    return CallToolResult(content=[text], structured_content=structured)


def _failed(error: MedaError) -> CallToolResult:
    """A tool error: meda's error body, as text and as structured content."""
    from mcp.types import CallToolResult, TextContent

    body = error.to_body()
    text = TextContent(type="text", text=json.dumps(body))
    return CallToolResult(content=[text], structured_content=body, is_error=True)


def serve_stdio(api: MedaApi) -> None:
    """Serve the tools on this process's stdin and stdout until the client closes them."""
    from mcp.server.stdio import stdio_server

    server = build_server(api)

    async def serve() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(serve)


# ---- /mcp on the HTTP API ----


class McpEndpoint:
    """The streamable-HTTP transport at ``/mcp``, run by the app's lifespan.

    Every request reached it through the app's middleware: Host and Origin checks, the
    bearer token, body limits and rate limits, as any API request. The SDK is loaded
    beside the server's start, not before it (it takes most of a second to import): a
    request that comes first waits for it.
    """

    def __init__(self, api: MedaApi) -> None:
        self.api = api
        self.manager: StreamableHTTPSessionManager | None = None
        self.missing: str | None = None
        self.ready: anyio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":  # stateless: no event stream (GET), no session (DELETE)
            await _only_post(scope, receive, send)
            return
        if self.ready is not None:
            with anyio.move_on_after(STARTUP_WAIT):
                await self.ready.wait()
        if self.manager is None:
            reason = self.missing or "the MCP endpoint is not running (the server starts or stops)"
            await refuse(send, BackendUnavailable(reason))
            return
        await self.manager.handle_request(scope, receive, send)

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        self.ready = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._serve)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()

    async def _serve(self) -> None:
        assert self.ready is not None
        try:
            self.missing = await anyio.to_thread.run_sync(sdk_missing)
            if self.missing is None:
                manager = await anyio.to_thread.run_sync(_manager, self.api)
                async with manager.run():
                    self.manager = manager
                    self.ready.set()
                    await anyio.sleep_forever()
        except Exception as error:  # an SDK it cannot use: the API serves on without /mcp
            self.missing = f"the MCP endpoint could not start: {error!r}"
        finally:
            self.manager = None
            self.ready.set()
            if self.missing is not None:
                log.warning("%s", self.missing)


async def _only_post(scope: Scope, receive: Receive, send: Send) -> None:
    """405, as the transport's specification says a server without an event stream answers
    a GET: else each GET would hold a connection open for nothing."""
    message = f"{scope['method']} is not served at {PATH}: MCP messages are POSTed"
    body = {
        "error": message,
        "code": "METHOD_NOT_ALLOWED",
        "details": {"message": message, "request_id": request_id.get()},
    }
    await JSONResponse(body, 405, {"Allow": "POST"})(scope, receive, send)


def mount(app: FastAPI, api: MedaApi) -> None:
    """Serve the tools at ``/mcp`` on ``app`` (run with the app's lifespan), calling ``api``."""
    endpoint = McpEndpoint(api)
    app.router.routes.append(Route(PATH, endpoint, include_in_schema=False))
    served = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[Any]:
        async with served(application) as state, endpoint.run():
            yield state

    app.router.lifespan_context = lifespan


def _manager(api: MedaApi) -> StreamableHTTPSessionManager:
    """Stateless and JSON: each request is whole in itself, so no session outlives it and
    none can be taken over; the app's middleware guards Host and Origin (the SDK's own
    check is off: it would answer the same requests differently)."""
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings

    return StreamableHTTPSessionManager(
        build_server(api, _client_of_request),
        json_response=True,
        stateless=True,
        security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )


def _client_of_request(request: Any) -> str | None:
    scope = getattr(request, "scope", None)
    return client_of(scope) if isinstance(scope, dict) else None
