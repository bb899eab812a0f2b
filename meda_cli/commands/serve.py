"""``meda serve``: the REST API server."""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

import typer

from meda_cli.output import fail
from meda_core.config import Settings
from meda_core.errors import MedaError
from meda_core.private import private_home

DEFAULT_RATE_LIMIT = "5/20"  # beyond loopback: 5 changes a second per client, bursts of 20


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
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
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
    log_level: str | None = typer.Option(
        None, help="debug, info, warning, error (default: MEDA_LOG_LEVEL or MEDA_LOG, info)"
    ),
    generate_token: bool = typer.Option(
        False, "--generate-token", help="Write MEDA_HOME/api-token if it does not exist"
    ),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="Serve HTTPS: certificate"),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="Serve HTTPS: private key"),
    shutdown_timeout: float = typer.Option(
        30.0, help="On SIGTERM, seconds in-flight requests get to finish"
    ),
) -> None:
    """Serve the REST API (Swagger UI at /swagger-ui, metrics at /metrics)."""
    import uvicorn

    from meda_api import create_app, logs
    from meda_api.ratelimit import Limit

    if (tls_cert is None) != (tls_key is None):
        typer.echo("error: --tls-cert and --tls-key go together", err=True)
        raise typer.Exit(2)
    home = Settings().home
    try:
        private_home(home)  # before the token is written there
    except MedaError as error:
        fail(error, as_json=False)
    token = api_token(home, host, generate_token)
    logs.configure(level=log_level.upper() if log_level else None,
                   secrets=[token] if token else [])  # fmt: skip
    default_limit = "off" if _loopback(host) else DEFAULT_RATE_LIMIT
    limit = Limit.parse(os.environ.get("MEDA_RATE_LIMIT", default_limit))
    origins = [o for o in os.environ.get("MEDA_CORS_ORIGINS", "").split(",") if o.strip()]
    app = create_app(token=token, cors_origins=origins, rate_limit=limit)
    uvicorn.run(
        app, host=host, port=port, log_config=None, access_log=False,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        timeout_graceful_shutdown=int(shutdown_timeout),
    )  # fmt: skip
