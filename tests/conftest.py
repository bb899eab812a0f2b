"""Shared fixtures; meda's own pytest plugin (meda_core.testing) provides the rest."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from meda_api import create_app
from meda_core.facade import Meda
from meda_core.models import CreateVMRequest, Image
from meda_core.testing import disks
from meda_core.testing.guest import BootableGuest, build_test_guest, default_cache
from meda_core.testing.host import free_port
from meda_core.testing.installs import install_entry_points


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that boots the test guest is a ``vm`` test, marked so or not: scripts/test.sh
    runs those in a process of their own, one guest at a time."""
    for item in items:
        if "test_guest" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.vm)


def pytest_itemcollected(item: pytest.Item) -> None:
    """Give each schemathesis case its operation in its test id.

    schemathesis names the test of each operation ``test…[GET /api/v1/vms]``, but pytest
    9.2 builds node ids from the function's own name, so every operation got the same id:
    a failure, ``--durations`` and ``--deselect`` could not say which operation it was.
    """
    label = getattr(item, "operation_label", None)
    if label and f"[{label}]" not in item.nodeid and hasattr(item, "_id"):
        item._id = item._id.with_params(label)


@pytest.fixture
def fake_image(fake_meda: Meda, tmp_path: Path) -> str:
    """A kernel-only image named ``default`` in the fake meda's store."""
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"not really a kernel")
    fake_meda.images.import_files("default", kernel=kernel, cmdline="console=ttyS0")
    return "default:latest"


@pytest.fixture
def client(fake_meda: Meda, fake_image: str) -> Iterator[TestClient]:
    """The API of the fake meda (with its ``default`` image), errors answered not raised."""
    with TestClient(
        create_app(fake_meda), raise_server_exceptions=False, base_url="http://localhost"
    ) as client:
        yield client


@pytest.fixture
def make_vm(fake_meda: Meda, fake_image: str):  # type: ignore[no-untyped-def]
    def make(name: str = "vm1", **fields: object):  # type: ignore[no-untyped-def]
        return fake_meda.vms.create(CreateVMRequest(name=name, **fields))  # type: ignore[arg-type]

    return make


@pytest.fixture
def running_vm(fake_meda: Meda, make_vm: Callable[..., Any]) -> str:
    """``vm1``, running on the fake backends (its fake agent answers)."""
    make_vm("vm1")
    fake_meda.vms.start("vm1")
    return "vm1"


@pytest.fixture
def guest_image(test_guest: BootableGuest) -> dict[str, object]:
    """Arguments for ``images.import_files`` that make the test guest an image."""
    return {"kernel": test_guest.kernel, "initrd": test_guest.initrd, "cmdline": test_guest.cmdline}


@pytest.fixture
def broken_plugin_dir(tmp_path: Path) -> Path:
    """A directory holding an installed-looking plugin whose import fails.

    Put it on ``sys.path`` (or PYTHONPATH) and the ``meda`` entry-point group has it.
    """
    root = install_entry_points(
        tmp_path / "site", "meda-broken-plugin", {"broken": "meda_broken_plugin"}
    )
    (root / "meda_broken_plugin.py").write_text("raise ImportError('this plugin is broken')\n")
    return root


#: A plugin whose hook is misspelled (``meda_register_backend``, one ``s`` short): pluggy
#: alone would register it and never call the hook.
MISSPELLED_PLUGIN = """\
from meda_core.plugin import hookimpl
from meda_core.testing.fakes import FakeStorage


@hookimpl
def meda_register_backend(registry):
    registry.add(FakeStorage)
"""


@pytest.fixture
def misspelled_plugin_dir(tmp_path: Path) -> Path:
    """Like :func:`broken_plugin_dir`, with a plugin whose hook name is misspelled."""
    root = install_entry_points(
        tmp_path / "site-typo", "meda-typo-plugin", {"typo": "meda_typo_plugin"}
    )
    (root / "meda_typo_plugin.py").write_text(MISSPELLED_PLUGIN)
    return root


ServeApi = Callable[..., str]


@pytest.fixture
def serve_api() -> Iterator[ServeApi]:
    """Serve a ``Meda`` over HTTP on loopback (uvicorn in a thread); returns its URL."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def serve(meda: Meda, token: str | None = None, **options: Any) -> str:
        """``options`` go to ``create_app`` (a rate limit, say)."""
        port = free_port()
        app = create_app(meda, token=token, **options)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield serve
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def host_secret(tmp_path: Path) -> Path:
    """A host file no guest may read: a hostile disk names it as its backing or data file."""
    path = tmp_path / "host" / "secret"
    path.parent.mkdir()
    path.write_bytes(b"HOST-SECRET-" + secrets.token_hex(16).encode())
    return path


@pytest.fixture
def stored_by_older_meda(fake_meda: Meda, tmp_path: Path, host_secret: Path) -> Image:
    """An image an older meda pulled as it was: its disk backed by a host file."""
    _, blob = fake_meda.images.blobs.add_file(disks.backed_by(tmp_path / "old", host_secret))
    image = Image(name="old", disk=blob, disk_format="qcow2", created=datetime.now(UTC))
    fake_meda.store.put_image(image)
    return image


ECHO_AGENT = Path(__file__).with_name("echo_agent.c")


@pytest.fixture(scope="session")
def echo_agent() -> Path:
    """A static program that serves the agent's virtio-serial port as an echo (built from
    tests/echo_agent.c): the channel tests need no real agent."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc and a static libc (apt-get install gcc libc6-dev)")
    cache = Path(os.environ.get("MEDA_TEST_GUEST_CACHE", default_cache()))
    key = hashlib.sha256(ECHO_AGENT.read_bytes()).hexdigest()[:16]
    binary = cache / f"echo-agent-{key}"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        built = binary.with_suffix(".tmp")
        argv = ["gcc", "-static", "-O2", "-o", str(built), str(ECHO_AGENT)]
        subprocess.run(argv, check=True, capture_output=True)
        built.replace(binary)
    return binary


@pytest.fixture(scope="session")
def echo_agent_guest(test_guest: BootableGuest, echo_agent: Path) -> BootableGuest:
    """The test guest with the echo stand-in as its agent."""
    cache = Path(os.environ.get("MEDA_TEST_GUEST_CACHE", default_cache()))
    return build_test_guest(cache, agent_program=echo_agent)
