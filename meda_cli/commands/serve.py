"""``meda serve``: the REST API server."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
from pathlib import Path

import typer

from meda_core.config import Settings


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_token(home: Path, host: str, generate: bool) -> str | None:
    """The bearer token to require: MEDA_API_TOKEN, else MEDA_HOME/api-token (0600).

    None on loopback without a configured token (the seed's behaviour); beyond loopback,
    a server without a token refuses to start.
    """
    if os.environ.get("MEDA_API_TOKEN"):
        return os.environ["MEDA_API_TOKEN"]
    path = home / "api-token"
    if generate and not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        typer.echo(f"wrote a new API token to {path}", err=True)
    if path.exists():
        return path.read_text().strip()
    if _loopback(host):
        return None
    typer.echo(
        f"error: refusing to serve on {host} without a token: set MEDA_API_TOKEN, or run "
        "with --generate-token to write one to MEDA_HOME/api-token (mode 0600)",
        err=True,
    )
    raise typer.Exit(2)


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind"),
    port: int = typer.Option(7777, help="Port to listen on"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
    generate_token: bool = typer.Option(
        False, "--generate-token", help="Write MEDA_HOME/api-token if it does not exist"
    ),
) -> None:
    """Serve the REST API (Swagger UI at /swagger-ui)."""
    import uvicorn

    from meda_api import create_app

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    token = api_token(Settings().home, host, generate_token)
    origins = [o for o in os.environ.get("MEDA_CORS_ORIGINS", "").split(",") if o.strip()]
    uvicorn.run(create_app(token=token, cors_origins=origins), host=host, port=port,
                log_level=log_level)  # fmt: skip
