"""``meda serve``: the REST API server."""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from meda_cli.output import fail
from meda_core.errors import Conflict, InvalidRequest, MedaError
from meda_core.host.private import private_home
from meda_core.inputs.references import is_loopback

if TYPE_CHECKING:  # the server's imports stay out of other commands (and of --help)
    import socket

    import uvicorn
    from fastapi import FastAPI

    from meda_api.ratelimit import Limit
    from meda_api.unixsocket import UnixListener
    from meda_core.settings import Settings
    from meda_core.state import serverfile

DEFAULT_RATE_LIMIT = "5/20"  # beyond loopback: 5 changes a second per client, bursts of 20
DEFAULT_READ_RATE_LIMIT = "20/100"  # and 20 reads a second, bursts of 100
MIN_TOKEN_LENGTH = 16
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: it goes in a header
_WILDCARDS = {"0.0.0.0", "::", ""}
log = logging.getLogger(__name__)


def _refuse(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _read_token(home: Path, token_file: Path | None, generate: bool) -> str | None:
    """MEDA_API_TOKEN, else ``token_file``, else MEDA_HOME/api-token (written if asked)."""
    if "MEDA_API_TOKEN" in os.environ:
        return os.environ["MEDA_API_TOKEN"].strip()
    path = token_file or home / "api-token"
    if generate and token_file is None and not path.exists():
        import secrets

        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        typer.echo(f"wrote a new API token to {path}", err=True)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        if token_file is not None:
            _refuse(f"no token file {token_file}")
        return None
    except OSError as exc:
        _refuse(f"cannot read the token file {path}: {exc.strerror}")


def api_token(
    home: Path,
    host: str,
    *,
    generate: bool = False,
    require: bool = False,
    token_file: Path | None = None,
) -> str | None:
    """The bearer token to require, or None.

    On loopback only when the operator asks for one (``--require-token``, ``--token-file``,
    ``--generate-token`` or MEDA_API_TOKEN), never because MEDA_HOME/api-token exists;
    beyond loopback always. Empty, short or unsendable tokens stop the server.
    """
    asked = require or generate or token_file is not None or "MEDA_API_TOKEN" in os.environ
    if not asked and is_loopback(host):
        return None
    token = _read_token(home, token_file, generate)
    if token is None:
        where = "" if is_loopback(host) else f" on {host}"
        _refuse(
            f"refusing to serve{where} without a token: set MEDA_API_TOKEN, give --token-file, "
            "or run with --generate-token to write one to MEDA_HOME/api-token (mode 0600)"
        )
    if len(token) < MIN_TOKEN_LENGTH or not _TOKEN.fullmatch(token):
        _refuse(
            f"the API token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters "
            f"without spaces (this one has {len(token)}); --generate-token writes a strong one"
        )
    return token


def _client_url(host: str, port: int, tls: bool) -> str:
    """The URL a client on this host reaches the server by."""
    name = "127.0.0.1" if host in _WILDCARDS else host
    if ":" in name:
        name = f"[{name}]"
    return f"{'https' if tls else 'http'}://{name}:{port}"


def bind(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound before anything else runs: a taken port stops
    ``meda serve`` before it recovers VMs or writes server.json for a server that is not."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every answer written in two parts waits for a delayed ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise Conflict(
                f"port {port} on {host or '0.0.0.0'} is in use by another program (another "
                "meda serve?): stop it, or give --port another port",
                host=host,
                port=port,
            ) from None
        raise InvalidRequest(
            f"cannot listen on {host}:{port}: {exc.strerror}", host=host, port=port
        ) from None
    return sock


def rate_limits(host: str) -> tuple[Limit | None, Limit | None]:
    """The limits on changes and on reads: MEDA_RATE_LIMIT and MEDA_READ_RATE_LIMIT, else
    none on loopback and the defaults beyond."""
    from meda_api.ratelimit import Limit  # the server's imports stay out of other commands

    loopback = is_loopback(host)
    changes = os.environ.get("MEDA_RATE_LIMIT", "off" if loopback else DEFAULT_RATE_LIMIT)
    reads = os.environ.get("MEDA_READ_RATE_LIMIT", "off" if loopback else DEFAULT_READ_RATE_LIMIT)
    return Limit.parse(changes), Limit.parse(reads, "MEDA_READ_RATE_LIMIT")


# Long only by its option list, the command's interface, one option a parameter (typer's way;
# the docstring is the command's --help, so the why is here); the work is in the helpers
# below, in the order it happens.
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind"),
    port: int = typer.Option(7777, help="Port to listen on"),
    log_level: str | None = typer.Option(
        None, help="debug, info, warning, error (default: MEDA_LOG_LEVEL or MEDA_LOG, info)"
    ),
    generate_token: bool = typer.Option(
        False, "--generate-token", help="Write MEDA_HOME/api-token if it does not exist, use it"
    ),
    require_token: bool = typer.Option(
        False,
        "--require-token",
        help="Require a token on loopback too: MEDA_API_TOKEN, --token-file or MEDA_HOME/api-token",
    ),
    token_file: Path | None = typer.Option(
        None, "--token-file", help="Require the bearer token held in this file"
    ),
    allowed_host: list[str] = typer.Option(
        [],
        "--allowed-host",
        help="A name clients reach the server by (its Host header), beyond loopback and the "
        "bind address; repeatable (also MEDA_ALLOWED_HOSTS)",
    ),
    allow_plain_http: bool = typer.Option(
        False,
        "--allow-plain-http",
        help="Beyond loopback, serve the token-protected API without TLS (e.g. behind a "
        "TLS proxy; also MEDA_ALLOW_PLAIN_HTTP)",
    ),
    unix_socket: Path | None = typer.Option(
        None, "--unix-socket", help="Also listen on this Unix socket (mode 0660, no token)"
    ),
    socket_group: str | None = typer.Option(
        None, "--socket-group", help="Group that owns the Unix socket: its members use the API"
    ),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="Serve HTTPS: certificate"),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="Serve HTTPS: private key"),
    shutdown_timeout: float = typer.Option(
        30.0, help="On SIGTERM, seconds in-flight requests get to finish"
    ),
) -> None:
    """Serve the REST API (Swagger UI at /swagger-ui, metrics at /metrics)."""
    from meda_core import __version__
    from meda_core.state import serverfile

    _check_options(tls_cert, tls_key, unix_socket, socket_group)
    settings = _private_settings()
    token = api_token(
        settings.home, host, generate=generate_token, require=require_token, token_file=token_file
    )
    _refuse_plain_token(token, host, tls_cert, allow_plain_http or settings.allow_plain_http)
    client_url = _start_logging(log_level, token, host, port, tls_cert is not None)
    local_socket = str(unix_socket) if unix_socket else None
    listening, app = _listen_and_build(host, port, settings, token, allowed_host, local_socket)
    config = _uvicorn_config(app, host, port, tls_cert, tls_key, shutdown_timeout)
    listener = _unix_listener(unix_socket, socket_group)
    sockets = [listening] if listener is None else [listening, listener.sock]
    written = serverfile.ServerFile(
        url=client_url,
        token=token,
        ca_file=str(tls_cert.resolve()) if tls_cert else None,
        unix_socket=str(unix_socket.resolve()) if unix_socket else None,
        netns=settings.netns,
        netns_create=settings.netns_create,
        pid=os.getpid(),
        version=__version__,
    )
    _run(config, settings.home, written, sockets, listener)


def _check_options(
    tls_cert: Path | None, tls_key: Path | None, unix_socket: Path | None, socket_group: str | None
) -> None:
    if (tls_cert is None) != (tls_key is None):
        _refuse("--tls-cert and --tls-key go together")
    if socket_group is not None and unix_socket is None:
        _refuse("--socket-group goes with --unix-socket")
    if unix_socket is not None and tls_cert is not None:
        _refuse("--unix-socket serves plain HTTP to local users; it cannot share --tls-cert")


def _private_settings() -> Settings:
    """The settings, with MEDA_HOME made private (before the token is written there)."""
    from meda_core.settings import Settings

    settings = Settings()
    try:
        private_home(settings.home)
    except MedaError as error:
        fail(error, as_json=False)
    return settings


def _refuse_plain_token(
    token: str | None, host: str, tls_cert: Path | None, plain_ok: bool
) -> None:
    if token is not None and tls_cert is None and not is_loopback(host) and not plain_ok:
        _refuse(
            f"refusing to take the bearer token over plain HTTP on {host}, where it would cross "
            "the network in clear: serve HTTPS with --tls-cert/--tls-key, or pass "
            "--allow-plain-http (MEDA_ALLOW_PLAIN_HTTP=1) if a TLS proxy fronts this server"
        )


def _start_logging(
    log_level: str | None, token: str | None, host: str, port: int, tls: bool
) -> str:
    """Configure the log (the token masked in it) and say where the server starts: its URL."""
    from meda_api import logs
    from meda_core import __version__

    logs.configure(level=log_level.upper() if log_level else None, secrets=[token] if token else [])
    client_url = _client_url(host, port, tls)
    log.info("meda %s (pid %d) starting on %s", __version__, os.getpid(), client_url)
    return client_url


def _listen_and_build(
    host: str,
    port: int,
    settings: Settings,
    token: str | None,
    allowed_host: list[str],
    local_socket: str | None,
) -> tuple[socket.socket, FastAPI]:
    """The bound socket, then the app (which opens MEDA_HOME and recovers the VMs)."""
    from meda_api import create_app
    from meda_api.hosts import HostPolicy

    limit, read_limit = rate_limits(host)
    origins = [o for o in os.environ.get("MEDA_CORS_ORIGINS", "").split(",") if o.strip()]
    hosts = HostPolicy.serving(host, [*settings.allowed_host_list(), *allowed_host])
    try:  # opening MEDA_HOME: a state from a newer meda, say, is an error, not a traceback
        listening = bind(host, port)  # before recovery touches a VM
        app = create_app(
            token=token,
            cors_origins=origins,
            rate_limit=limit,
            read_rate_limit=read_limit,
            hosts=hosts,
            local_socket=local_socket,
        )
    except MedaError as error:
        fail(error, as_json=False)
    return listening, app


def _uvicorn_config(
    app: FastAPI,
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    shutdown_timeout: float,
) -> uvicorn.Config:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        # The peer's own address names a client (rate limits, caps, idempotency keys,
        # audit lines): never an X-Forwarded-For header any local process may write.
        proxy_headers=False,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        timeout_graceful_shutdown=int(shutdown_timeout),
    )


def _unix_listener(unix_socket: Path | None, socket_group: str | None) -> UnixListener | None:
    from meda_api.unixsocket import UnixListener

    if unix_socket is None:
        return None
    try:
        return UnixListener(unix_socket, socket_group)
    except MedaError as error:
        _refuse(error.message)
    except OSError as exc:
        _refuse(f"cannot listen on {unix_socket}: {exc.strerror}")


def _run(
    config: uvicorn.Config,
    home: Path,
    written: serverfile.ServerFile,
    sockets: list[socket.socket],
    listener: UnixListener | None,
) -> None:
    """Serve until stopped, with MEDA_HOME/server.json saying where while it runs."""
    from meda_api.unixsocket import SocketServer
    from meda_core.state import serverfile

    serverfile.write(home, written)
    server = SocketServer(config, listener, lambda: serverfile.remove(home, written))
    try:
        server.run(sockets=sockets)
    finally:  # also when the app failed to start, which skips the server's shutdown
        serverfile.remove(home, written)
    if not server.started:
        typer.echo("error: the server did not start (see the log above)", err=True)
        raise typer.Exit(1)
