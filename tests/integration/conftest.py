"""A real ``meda serve`` process with the test guest as its default image."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from meda_core.facade import Meda
from meda_core.images import build as imagebuild
from meda_core.models import Image
from meda_core.settings import Settings
from meda_core.testing.guest import BootableGuest
from meda_core.testing.host import free_port, processes_mentioning
from meda_core.testing.installs import install_entry_points
from meda_core.testing.pytest_plugin import made_namespace
from meda_tapbridge.backend import vm_namespace_prefix


@dataclass
class Server:
    home: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    #: More ``meda serve`` options; with ``--tls-cert``, ``ca_file`` checks the server.
    args: tuple[str, ...] = ()
    ca_file: Path | None = None
    #: Where the server runs: another tree's code is imported from its folder.
    cwd: Path | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ca_file else "http"
        return f"{scheme}://127.0.0.1:{self.port}/api/v1"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "meda_cli.main",
            "serve",
            "--port",
            str(self.port),
            *self.args,
        ]
        log = (self.home / "server.log").open("ab")
        self.process = subprocess.Popen(argv, env=self.env, stdout=log, stderr=log, cwd=self.cwd)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{self.url}/health", headers=self.auth, verify=self.verify)
                if health.status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.kill()  # never leave a server that did not come up
        log_text = (self.home / "server.log").read_text()
        raise AssertionError(f"meda serve did not come up: {log_text}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)
        self.process = None

    @property
    def auth(self) -> dict[str, str]:
        token = self.env.get("MEDA_API_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, headers=self.auth, verify=self.verify)


def read_until(chunks: object, text: str, timeout: float) -> str:
    """What the stream gave until ``text`` came (AssertionError after ``timeout``)."""
    seen, deadline = "", time.monotonic() + timeout
    for chunk in chunks:  # type: ignore[attr-defined]
        seen += chunk
        if text in seen:
            return seen
        assert time.monotonic() < deadline, f"no {text!r} after {timeout}s: {seen[-2000:]}"
    raise AssertionError(f"the stream ended before {text!r}: {seen[-2000:]}")


StartServer = Callable[..., Server]


@contextlib.contextmanager
def _servers(home: Path, netns: str, guest: dict[str, object]) -> Iterator[StartServer]:
    """Start servers on ``home`` (the test guest as its default image); afterwards stop
    them, delete what they left through meda itself and check that nothing leaked."""
    base_env = {
        **os.environ,
        "MEDA_HOME": str(home),
        "MEDA_DEFAULT_IMAGE": "guest",
        "MEDA_NETNS": netns,
        # Forwards also answer in the namespace meda runs in (the host's): on loopback only.
        "MEDA_FORWARD_ADDRESS": "127.0.0.1",
    }
    Meda(Settings(home=home)).images.import_files("guest", **guest)  # type: ignore[arg-type]
    servers: list[Server] = []

    def start(*args: str, ca_file: Path | None = None, **env: str) -> Server:
        srv = Server(home=home, env={**base_env, **env}, args=args, ca_file=ca_file)
        srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.kill(signal.SIGTERM)
    _leaves_nothing(home, servers[-1].env if servers else base_env, netns)


def _leaves_nothing(home: Path, env: dict[str, str], netns: str) -> None:
    settings = Settings(
        home=home, stop_timeout=3, netns=netns, network=env.get("MEDA_NETWORK", "auto")
    )
    meda = Meda(settings)
    uuids = [vm.uuid for vm in meda.vms.list()]
    meda.vms.delete_all()
    for uuid in uuids:
        assert processes_mentioning(uuid) == []
    assert meda.store.leases("meda0") == [] and meda.store.forwards() == []
    assert list((home / "net" / "proxies").glob("*")) == []  # no forward proxy, no pid file
    # Templates and clones had namespaces of their own: none may outlive its VM.
    assert list(Path("/run/netns").glob(vm_namespace_prefix(home) + "*")) == []


@pytest.fixture
def start_server(
    tmp_path: Path, guest_image: dict[str, object], netns: str
) -> Iterator[StartServer]:
    """Start ``meda serve`` with its network in a test-made namespace (extra env allowed)."""
    with _servers(tmp_path / "home", netns, guest_image) as start:
        yield start


@pytest.fixture(scope="module")
def module_start_server(
    tmp_path_factory: pytest.TempPathFactory, test_guest: BootableGuest
) -> Iterator[StartServer]:
    """``start_server`` shared by a module's tests (say, to share one running guest)."""
    guest = {
        "kernel": test_guest.kernel,
        "initrd": test_guest.initrd,
        "cmdline": test_guest.cmdline,
    }
    with (
        made_namespace() as netns,
        _servers(tmp_path_factory.mktemp("home"), netns, guest) as start,
    ):
        yield start


@pytest.fixture
def server(start_server: StartServer) -> Server:
    return start_server()


RunMeda = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_meda(tmp_path: Path) -> RunMeda:
    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "MEDA_HOME": str(tmp_path / "cli-home"), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "meda_cli.main", *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


@pytest.fixture(scope="session")
def debian_image() -> Image:
    """The Debian image ``meda images build`` makes, built once and cached across runs."""
    home = Path(os.environ.get("MEDA_TEST_DEBIAN_HOME", Path.home() / ".cache/meda/debian"))
    meda = Meda(Settings(home=home))
    return imagebuild.build(
        meda.images, "debian:12", imagebuild.BuildSpec(), home / "cache" / "work", print
    )


@pytest.fixture
def pausing_backends(tmp_path: Path) -> dict[str, str]:
    """Environment that makes ``meda serve`` use QEMU and qcow2 backends that can pause
    at a step (``MEDA_TEST_PAUSE_AT``, see ``pausing_plugin``)."""
    site = install_entry_points(
        tmp_path / "site", "meda-pausing", {"pausing": "tests.integration.pausing_plugin"}
    )
    repo = Path(__file__).resolve().parents[2]
    return {
        "PYTHONPATH": os.pathsep.join([str(site), str(repo)]),
        "MEDA_HYPERVISOR": "pausing-qemu",
        "MEDA_STORAGE": "pausing-qcow2",
    }
