"""``meda serve``: the REST API server."""

from __future__ import annotations

import typer


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind"),
    port: int = typer.Option(7777, help="Port to listen on"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
) -> None:
    """Serve the REST API (Swagger UI at /swagger-ui)."""
    import uvicorn

    from meda_api import create_app

    uvicorn.run(create_app(), host=host, port=port, log_level=log_level)
