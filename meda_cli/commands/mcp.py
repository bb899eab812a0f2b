"""``meda mcp``: meda's tools for MCP clients (AI agents), over stdin and stdout."""

from __future__ import annotations

from meda_cli.context import api, handles_errors
from meda_core.errors import BackendUnavailable


@handles_errors
def mcp() -> None:
    """Serve meda's tools to an MCP client on stdin and stdout (the stdio transport).

    Tools: list_vms, get_vm, run, create_vm, start_vm, stop_vm, delete_vm, exec,
    put_file, get_file, console. With --url (or MEDA_URL) they go to that server with
    its token, else they act on this host's VMs (MEDA_HOME) in this process. An MCP
    client starts it: {"command": "meda", "args": ["mcp"]}. Needs the MCP SDK: pip
    install 'meda[mcp]'. See docs/mcp.md.
    """
    from meda_api.mcp import sdk_missing, serve_stdio

    missing = sdk_missing()
    if missing is not None:
        raise BackendUnavailable(missing)
    serve_stdio(api())
