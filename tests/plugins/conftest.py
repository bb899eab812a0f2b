"""A hostile registry: a small HTTP server on 127.0.0.1 that serves what a test crafts; and
the real meda agent program, running on the host."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from meda_agent.build import agent_binary
from meda_core.plugin import AgentChannel
from meda_oci import backend as oci_backend
from meda_oci.diskdigest import DiskDigest

Handler = Callable[[BaseHTTPRequestHandler], None]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class HostileRegistry:
    """Routes ``(method, path)`` to handlers; records every request; ``sent`` counts body
    bytes that reached the socket (until the client hung up)."""

    address: str = ""
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    sent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return f"http://{self.address}{path}"

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    def reply(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] = b"",
        status: int = 200,
        headers: dict[str, str] | None = None,
        length: int | None = None,
    ) -> None:
        """Answer ``method path`` with ``body`` (bytes or pieces, written as they come)."""

        def handle(request: BaseHTTPRequestHandler) -> None:
            pieces = [body] if isinstance(body, bytes) else body
            size = length if length is not None else len(body) if isinstance(body, bytes) else None
            request.send_response(status)
            for name, value in (headers or {}).items():
                request.send_header(name, value)
            if size is not None:
                request.send_header("Content-Length", str(size))
            request.end_headers()
            if request.command != "HEAD":
                self.write(request, pieces)

        self.route(method, path, handle)

    def write(self, request: BaseHTTPRequestHandler, pieces: Iterable[bytes]) -> None:
        try:
            for piece in pieces:
                if self.stop.is_set():
                    return
                request.wfile.write(piece)
                request.wfile.flush()
                self.sent += len(piece)
        except OSError:
            pass  # the client hung up: what a hostile registry wants to see tested

    def blob(self, data: bytes, repo: str = "meda/evil", digest: str | None = None) -> str:
        """Serve ``data`` as the blob ``digest`` (its real digest unless given), with ranges."""
        digest = digest or "sha256:" + hashlib.sha256(data).hexdigest()

        def handle(request: BaseHTTPRequestHandler) -> None:
            wanted = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))
            start = int(wanted.group(1)) if wanted else 0
            request.send_response(206 if wanted else 200)
            request.send_header("Content-Length", str(len(data) - start))
            request.end_headers()
            if request.command == "GET":
                self.write(request, [data[start:]])

        for method in ("GET", "HEAD"):
            self.route(method, f"/v2/{repo}/blobs/{digest}", handle)
        return digest

    def manifest(
        self, manifest: dict[str, Any] | bytes, repo: str = "meda/evil", tag: str = "v1"
    ) -> str:
        raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": digest}
        for method in ("GET", "HEAD"):
            for ref in (tag, digest):
                self.reply(method, f"/v2/{repo}/manifests/{ref}", raw, headers=headers)
        return digest

    def authorizations(self) -> list[str]:
        return [s.headers["Authorization"] for s in self.seen if "Authorization" in s.headers]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """meda hanging up on a hostile answer is the point, not an error worth a trace."""


def _serve(registry: HostileRegistry) -> ThreadingHTTPServer:
    class Handle(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _any(self) -> None:
            path = self.path.split("?", 1)[0]
            registry.seen.append(Seen(self.command, self.path, dict(self.headers.items())))
            length = int(self.headers.get("Content-Length") or 0)
            handler = registry.routes.get((self.command, path))
            if handler is None and (self.command, path) == ("GET", "/v2/"):
                handler = _ok
            if handler is None:
                handler = _not_found
            if length and (self.command, path) not in registry.routes:
                self.rfile.read(length)
            handler(self)

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = _any

    server = _QuietServer(("127.0.0.1", 0), Handle)
    server.daemon_threads = True
    server.block_on_close = False
    registry.address = f"127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def _ok(request: BaseHTTPRequestHandler) -> None:
    request.send_response(200)
    request.send_header("Content-Length", "0")
    request.end_headers()


def _not_found(request: BaseHTTPRequestHandler) -> None:
    request.send_response(404)
    request.send_header("Content-Length", "0")
    request.end_headers()


def trickle(data: bytes, every: float) -> Iterator[bytes]:
    """``data`` one byte at a time, ``every`` seconds apart: no per-read timeout trips."""
    for byte in data:
        time.sleep(every)
        yield bytes([byte])


@pytest.fixture
def hostile() -> Iterator[Callable[[], HostileRegistry]]:
    """Start hostile registries (as many as a test asks for); stopped afterwards."""
    started: list[tuple[HostileRegistry, ThreadingHTTPServer]] = []

    def start() -> HostileRegistry:
        registry = HostileRegistry()
        started.append((registry, _serve(registry)))
        return registry

    yield start
    for registry, server in started:
        registry.stop.set()
        server.shutdown()
        server.server_close()


@dataclass
class RunningAgent:
    """The real meda agent program running on the host, serving a unix socket."""

    channel: AgentChannel
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="session")
def agent_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guest program, compiled once per test session."""
    return agent_binary(tmp_path_factory.mktemp("agent-cache"))


@pytest.fixture
def run_agent(agent_program: Path, tmp_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    """Start the agent with ``--listen`` (``prefix``: e.g. ``unshare --uts``); each is
    killed by its PID afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        *args: str, prefix: Sequence[str] = (), env: dict[str, str] | None = None
    ) -> RunningAgent:
        socket = tmp_path / f"agent-{len(started)}.sock"
        command = [*prefix, str(agent_program), "--listen", str(socket), *args]
        process = subprocess.Popen(command, env=env)
        started.append(process)
        deadline = time.monotonic() + 10
        while not socket.exists():
            assert process.poll() is None and time.monotonic() < deadline, "agent did not start"
            time.sleep(0.01)
        return RunningAgent(AgentChannel(socket=socket), process)

    yield start
    for process in started:
        process.kill()
        process.wait()


@pytest.fixture
def four_chunks_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pulls use none of this host's docker credentials and move 4 chunks at once."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    monkeypatch.setenv("MEDA_OCI_CONCURRENCY", "4")


@pytest.fixture
def watched_digests(monkeypatch: pytest.MonkeyPatch) -> list[DiskDigest]:
    """Every whole-disk digest the pulls of the test make, in order."""
    digests: list[DiskDigest] = []

    class Watched(DiskDigest):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            digests.append(self)

    monkeypatch.setattr(oci_backend, "DiskDigest", Watched)
    return digests
