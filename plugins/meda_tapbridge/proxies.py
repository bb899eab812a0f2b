"""The forward proxies of ``MEDA_NETNS`` mode: one process per forward, known by pid file.

A forward's DNAT lives in meda's namespace, so in ``MEDA_NETNS`` mode it answers only
there. To answer from the host's namespace too (the one meda runs in), meda binds the
host port here and hands the socket to a proxy (``proxy.py``) that it starts inside
``MEDA_NETNS``, where the guest is reachable. Each proxy has a pid file (its PID, start
time and boot, and what it forwards) and is stopped by that, never by name.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

from pydantic import BaseModel, ValidationError

from meda_core.plugin import DIR_MODE, BackendError, Conflict, RuntimeInfo, create_private
from meda_core.plugin import namespaces as netns
from meda_core.plugin import processes as procs

PROXY = Path(__file__).with_name("proxy.py")
#: The account a proxy becomes once it has its socket: it needs no privilege at all.
USER = "nobody"
READY_TIMEOUT = 10.0
BACKLOG = 128


class ProxySpec(BaseModel, frozen=True):
    """What one proxy does: listen on ``address:host_port`` here, relay to ``target``."""

    protocol: str
    host_port: int
    address: str
    target: str
    #: Serve clients whose address is one of meda's namespace's (guests going out).
    allow_local: bool = False

    @property
    def key(self) -> str:
        return f"{self.protocol}-{self.host_port}"


class ProxyRecord(BaseModel):
    """A pid file's content."""

    runtime: RuntimeInfo
    spec: ProxySpec


class Proxies:
    """The proxies of one meda, relaying into namespace ``ns``; files in ``directory``."""

    def __init__(self, directory: Path, ns: str | None) -> None:
        self.directory = directory
        self.ns = ns

    def records(self) -> dict[str, ProxyRecord | None]:
        """Every pid file, by forward (None: unreadable)."""
        found: dict[str, ProxyRecord | None] = {}
        for path in sorted(self.directory.glob("*.json")):
            try:
                found[path.stem] = ProxyRecord.model_validate_json(path.read_text())
            except (OSError, ValidationError):
                found[path.stem] = None
        return found

    def running(self) -> dict[str, ProxySpec]:
        """The proxies that run, by forward."""
        return {
            key: record.spec
            for key, record in self.records().items()
            if record is not None and procs.is_alive(record.runtime)
        }

    def sync(self, wanted: Iterable[ProxySpec]) -> None:
        """Run exactly ``wanted``: stop the others, start what is missing. Raises for the
        first that cannot start, after trying all of them."""
        want = {spec.key: spec for spec in wanted}
        running = self.running()
        for key in self.records():
            if running.get(key) is None or want.get(key) != running[key]:
                self.stop(key)
        failure: Exception | None = None
        for key, spec in want.items():
            if running.get(key) != spec:
                try:
                    self.start(spec)
                except (BackendError, Conflict) as exc:
                    failure = failure or exc
        if failure is not None:
            raise failure

    def orphans(self, wanted: Iterable[ProxySpec]) -> list[tuple[str, Callable[[], object]]]:
        """Pid files of proxies not ``wanted`` (running or not), with their removal."""
        keys = {spec.key for spec in wanted}
        running = self.running()
        found: list[tuple[str, Callable[[], object]]] = []
        for key, record in self.records().items():
            if key not in keys:
                pid = f" (pid {record.runtime.pid})" if record and key in running else ""
                found.append((f"forward proxy {key}{pid}", partial(self.stop, key)))
        return found

    # ---- one proxy ----

    def _pidfile(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def _log(self, key: str) -> Path:
        return self.directory / f"{key}.log"

    def start(self, spec: ProxySpec) -> None:
        """Bind the host port here, start the proxy with it and wait until it is ready."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        prefix = netns.exec_prefix(self.ns)  # BackendUnavailable if the namespace is gone
        with _bound(spec) as sock:
            process = self._spawn([*prefix, *_proxy_argv(spec, sock.fileno())], spec, sock)
        # meda may live long (the server): reap the proxy when it ends, leave no zombie.
        threading.Thread(target=process.wait, name=f"reap-proxy-{process.pid}", daemon=True).start()
        self._write_pidfile(spec, process.pid)
        if not _ready(process):
            process.kill()
            message = self._log(spec.key).read_text(errors="replace").strip()[-1000:]
            self.stop(spec.key)
            raise BackendError(
                f"the proxy for host port {spec.host_port}/{spec.protocol} did not start: "
                f"{message or 'no error output'}",
                host_port=spec.host_port,
            )

    def _spawn(
        self, argv: list[str], spec: ProxySpec, sock: socket.socket
    ) -> subprocess.Popen[bytes]:
        """The proxy process, handed ``sock``; its errors go to its log file."""
        with os.fdopen(create_private(self._log(spec.key)), "wb") as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                pass_fds=(sock.fileno(),),
                start_new_session=True,
            )

    def _write_pidfile(self, spec: ProxySpec, pid: int) -> None:
        runtime = procs.identify(pid)
        if runtime is not None:
            record = ProxyRecord(runtime=runtime, spec=spec)
            with os.fdopen(create_private(self._pidfile(spec.key)), "w") as out:
                out.write(record.model_dump_json())

    def stop(self, key: str) -> None:
        """Stop the proxy of ``key`` if it runs, and remove its files."""
        record = self.records().get(key)
        if record is not None and procs.is_alive(record.runtime):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.runtime.pid, signal.SIGTERM)
            if not procs.wait_gone(record.runtime, 5):
                procs.kill(record.runtime)
        self._pidfile(key).unlink(missing_ok=True)
        self._log(key).unlink(missing_ok=True)


def _proxy_argv(spec: ProxySpec, fd: int) -> list[str]:
    """proxy.py's command line: relay the socket ``fd`` to the spec's target."""
    return [
        sys.executable,
        "-I",
        str(PROXY),
        "--fd",
        str(fd),
        "--target",
        spec.target,
        "--user",
        USER,
        "--forward",
        f"{spec.protocol}/{spec.host_port}",
        *(["--allow-local"] if spec.allow_local else []),
    ]


@contextlib.contextmanager
def _bound(spec: ProxySpec) -> Iterator[socket.socket]:
    """The forward's socket, bound (and listening, for TCP) in this process's namespace."""
    tcp = spec.protocol == "tcp"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    with sock:
        try:
            if tcp:
                # Connections the last proxy left in TIME_WAIT must not block a new one.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((spec.address, spec.host_port))
            if tcp:
                sock.listen(BACKLOG)
        except OSError as exc:
            raise Conflict(
                f"host port {spec.host_port}/{spec.protocol} is in use on "
                f"{spec.address}: {exc.strerror}",
                host_port=spec.host_port,
            ) from None
        yield sock


def _ready(process: subprocess.Popen[bytes]) -> bool:
    """Whether the proxy says ``ready`` within :data:`READY_TIMEOUT` seconds."""
    assert process.stdout is not None
    with process.stdout, selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(READY_TIMEOUT):
            return False
        return process.stdout.readline() == b"ready\n"
