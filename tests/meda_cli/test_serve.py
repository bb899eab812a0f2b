"""``meda serve``'s token rules, its MEDA_HOME/server.json, and its Unix socket that only
the chosen group can use."""

from __future__ import annotations

import asyncio
import grp
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from meda_cli import context
from meda_cli.commands.serve import api_token, bind
from meda_cli.main import app
from meda_core import __version__
from meda_core.errors import InvalidRequest
from meda_core.interface.remote import RemoteApi
from meda_core.state import serverfile
from meda_core.testing.host import free_port, self_signed_certificate

STRONG = "k" * 24
runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("MEDA_API_TOKEN", raising=False)
    yield
    context.use_server(None)


# ---- which token, when ----


def test_a_token_file_that_merely_exists_does_not_turn_auth_on(tmp_path: Path) -> None:
    """The seed's curl examples keep working on loopback whatever lies in MEDA_HOME."""
    (tmp_path / "api-token").write_text(STRONG + "\n")
    assert api_token(tmp_path, "127.0.0.1", generate=False) is None
    assert api_token(tmp_path, "localhost", generate=False) is None
    assert api_token(tmp_path, "127.0.0.1", require=True) == STRONG


def test_on_loopback_the_operator_asks_for_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(typer.Exit):
        api_token(tmp_path, "127.0.0.1", require=True)  # asked for, and there is none
    given = tmp_path / "given"
    given.write_text(STRONG.upper())
    assert api_token(tmp_path, "127.0.0.1", token_file=given) == STRONG.upper()
    generated = api_token(tmp_path, "127.0.0.1", generate=True)
    assert generated and (tmp_path / "api-token").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("MEDA_API_TOKEN", "e" * 20)
    assert api_token(tmp_path, "127.0.0.1") == "e" * 20


def test_beyond_loopback_a_token_is_mandatory(tmp_path: Path) -> None:
    with pytest.raises(typer.Exit):
        api_token(tmp_path, "0.0.0.0")
    token = api_token(tmp_path, "0.0.0.0", generate=True)
    assert token and len(token) >= 16
    assert api_token(tmp_path, "::") == token


@pytest.mark.parametrize("bad", ["", "   \n", "short", "x" * 15, "sixteen chars ok", "é" * 20])
def test_empty_short_or_unsendable_tokens_stop_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    (tmp_path / "api-token").write_text(bad)
    with pytest.raises(typer.Exit):
        api_token(tmp_path, "0.0.0.0", generate=False)
    assert "at least 16" in capsys.readouterr().err
    (tmp_path / "api-token").unlink()
    monkeypatch.setenv("MEDA_API_TOKEN", bad)
    with pytest.raises(typer.Exit):
        api_token(tmp_path, "127.0.0.1", generate=False)  # set, even empty: never silently off


def _serve(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "MEDA_HOME": str(home), **env}
    return subprocess.run(
        [sys.executable, "-m", "meda_cli.main", "serve", "--port", str(free_port()), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_no_token_over_plain_http_beyond_loopback(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this host: nothing ever listens on it.
    refused = _serve("--host", "192.0.2.1", home=tmp_path, MEDA_API_TOKEN=STRONG)
    assert refused.returncode == 2
    assert "plain HTTP" in refused.stderr and "--allow-plain-http" in refused.stderr
    allowed = _serve(
        "--host", "192.0.2.1", "--allow-plain-http", home=tmp_path, MEDA_API_TOKEN=STRONG
    )
    assert "plain HTTP" not in allowed.stderr  # past the check: the bind itself fails
    assert allowed.returncode != 0 and "192.0.2.1" in allowed.stderr


# ---- a real server: server.json, the socket ----


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    home: Path
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """``meda serve`` as a process (user-mode network: nothing on the host's), stopped after."""
    started: list[Served] = []

    def start(*args: str, **env: str) -> Served:
        home, port = tmp_path / "home", free_port()
        environment = {**os.environ, "MEDA_HOME": str(home), "MEDA_NETWORK": "user", **env}
        log = (tmp_path / "serve.log").open("ab")
        argv = [sys.executable, "-m", "meda_cli.main", "serve", "--port", str(port), *args]
        scheme = "https" if "--tls-cert" in args else "http"
        served = Served(
            subprocess.Popen(argv, env=environment, stdout=log, stderr=log), home, port, scheme
        )
        started.append(served)
        deadline = time.monotonic() + 30
        while not (home / "server.json").exists() or not _answers(served.url):
            assert served.process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        return served

    yield start
    for served in started:
        served.process.terminate()
        served.process.wait(30)


def _answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/api/v1/health", timeout=2, verify=False)  # only: is it up?
    except httpx.TransportError:
        return False
    return True


def test_the_cli_takes_the_token_from_server_json(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    served = serve("--require-token", MEDA_API_TOKEN=STRONG)
    written = serverfile.path(served.home)
    assert written.stat().st_mode & 0o777 == 0o600
    info = serverfile.load(served.home)
    assert info is not None and info.token == STRONG and info.url == served.url
    assert httpx.get(f"{served.url}/api/v1/vms").status_code == 401  # asked for: required
    monkeypatch.setenv("MEDA_HOME", str(served.home))
    for url in (served.url, f"http://localhost:{served.port}/api/v1"):
        result = runner.invoke(app, ["--url", url, "list", "--json"], env={"MEDA_API_TOKEN": ""})
        assert result.exit_code == 0, result.stderr


def test_a_stopped_server_leaves_no_token_behind(serve: Callable[..., Served]) -> None:
    """Whoever binds the port after the server stops must not get the token from a CLI
    that still reads server.json."""
    served = serve("--require-token", MEDA_API_TOKEN=STRONG)
    served.process.terminate()
    served.process.wait(30)
    assert not serverfile.path(served.home).exists()


def test_the_cli_takes_the_certificate_too(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    served = serve("--tls-cert", str(cert), "--tls-key", str(key), "--generate-token")
    info = serverfile.load(served.home)
    assert info is not None and info.url == served.url and info.ca_file == str(cert)
    monkeypatch.setenv("MEDA_HOME", str(served.home))
    env = {"MEDA_API_TOKEN": "", "MEDA_CA_FILE": ""}
    result = runner.invoke(app, ["--url", served.url, "list", "--json"], env=env)
    assert result.exit_code == 0, result.stderr
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("MEDA_HOME", str(elsewhere))  # no server.json: no token, unknown CA
    assert runner.invoke(app, ["--url", served.url, "list"], env=env).exit_code == 5


def test_a_server_json_others_can_write_is_refused(tmp_path: Path) -> None:
    serverfile.write(tmp_path, serverfile.ServerFile(url="http://127.0.0.1:1", token=STRONG))
    serverfile.path(tmp_path).chmod(0o666)
    with pytest.raises(InvalidRequest):
        serverfile.load(tmp_path)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's own is root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="meda-sock-"))
    folder.chmod(0o711)
    yield folder
    for item in folder.iterdir():
        item.unlink()
    folder.rmdir()


def _as_nobody(socket_path: Path, *groups: int) -> subprocess.CompletedProcess[str]:
    """A tiny client as user ``nobody``, in ``groups`` only, asking the socket for /health."""
    client = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({str(socket_path)!r})\n"
        "except OSError as e:\n"
        "    print(e.strerror); sys.exit(3)\n"
        "s.sendall(b'GET /api/v1/health HTTP/1.1\\r\\nHost: localhost\\r\\n"
        "Connection: close\\r\\n\\r\\n')\n"
        "print(s.recv(200).decode().split('\\r\\n')[0])\n"
    )
    group_args = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    argv = [
        "setpriv",
        "--reuid",
        "nobody",
        "--regid",
        "nogroup",
        *group_args,
        sys.executable,
        "-I",
        "-c",
        client,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def test_the_unix_socket_is_for_its_group_only(
    serve: Callable[..., Served], socket_dir: Path
) -> None:
    path, group = socket_dir / "meda.sock", grp.getgrnam("adm")
    served = serve(
        "--unix-socket",
        str(path),
        "--socket-group",
        "adm",
        "--require-token",
        MEDA_API_TOKEN=STRONG,
    )
    status = path.stat()
    assert status.st_mode & 0o777 == 0o660 and status.st_gid == group.gr_gid
    stranger = _as_nobody(path)
    assert stranger.returncode == 3 and "Permission denied" in stranger.stdout
    member = _as_nobody(path, group.gr_gid)
    assert member.returncode == 0 and "200 OK" in member.stdout, member.stdout + member.stderr
    # Over the socket its mode decides, not a token; the CLI and RemoteApi speak unix://.
    assert httpx.get(f"{served.url}/api/v1/vms").status_code == 401
    listed = runner.invoke(
        app, ["--url", f"unix://{path}", "list", "--json"], env={"MEDA_API_TOKEN": ""}
    )
    assert listed.exit_code == 0, listed.stderr
    assert RemoteApi(f"unix://{path}").list_vms().count == 0
    served.process.terminate()
    served.process.wait(30)
    assert not path.exists()  # the server removes its socket


def test_the_socket_never_replaces_another_file(tmp_path: Path) -> None:
    victim = tmp_path / "precious"
    victim.write_text("keep me")
    refused = _serve("--unix-socket", str(victim), home=tmp_path / "home")
    assert refused.returncode == 2 and "not a socket" in refused.stderr
    assert victim.read_text() == "keep me"
    unknown = _serve(
        "--unix-socket",
        str(tmp_path / "s"),
        "--socket-group",
        "no-such-group",
        home=tmp_path / "home",
    )
    assert unknown.returncode == 2 and "no-such-group" in unknown.stderr


def test_a_unix_socket_client_reports_a_missing_socket(tmp_path: Path) -> None:
    api = RemoteApi(f"unix://{tmp_path}/none.sock")
    with pytest.raises(Exception, match="cannot reach the meda server at unix://"):
        api.list_vms()


def test_server_json_says_where_the_network_lives(serve: Callable[..., Served], netns: str) -> None:
    """A CLI in another shell learns the server's namespace, process and version."""
    served = serve(MEDA_NETNS=netns)
    info = serverfile.load(served.home)
    assert info is not None
    assert (info.netns, info.pid, info.version) == (netns, served.process.pid, __version__)


def test_a_stopped_server_leaves_where_its_network_lives_and_nothing_more(
    serve: Callable[..., Served], netns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The VMs and their network outlive the server: a later CLI in a shell without
    MEDA_NETNS acts on that namespace (not the host's), and gets no token or URL."""
    served = serve("--require-token", MEDA_API_TOKEN=STRONG, MEDA_NETNS=netns)
    served.process.terminate()
    served.process.wait(30)
    assert serverfile.load(served.home) == serverfile.ServerFile(netns=netns)
    monkeypatch.setenv("MEDA_HOME", str(served.home))
    monkeypatch.delenv("MEDA_NETNS", raising=False)
    assert context.local_settings().netns == netns


def test_a_taken_port_stops_the_server_before_it_touches_anything(tmp_path: Path) -> None:
    """Exit 4 (conflict) with a message, before recovery and before server.json: another
    server there keeps its clients."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environment = {
            **os.environ,
            "MEDA_HOME": str(tmp_path),
            "MEDA_NETWORK": "user",
            "MEDA_LOG_LEVEL": "info",
        }
        result = subprocess.run(
            [sys.executable, "-m", "meda_cli.main", "serve", "--port", str(port)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 4, result.stderr
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr
    assert "recovered" not in result.stderr
    assert not serverfile.path(tmp_path).exists()


def test_the_server_socket_answers_without_waiting_for_delayed_acks() -> None:
    """Connections accepted on ``bind``'s socket get TCP_NODELAY from asyncio, as uvicorn's
    own get: without it, an answer written as headers then body waits ~40 ms for an ACK."""
    nodelay: list[int] = []

    async def accept_one() -> None:
        listening = bind("127.0.0.1", 0)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=listening)
        async with server:
            port = listening.getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            while not nodelay:
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(asyncio.wait_for(accept_one(), 10))
    assert nodelay == [1]
