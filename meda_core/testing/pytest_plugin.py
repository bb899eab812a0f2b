"""meda's pytest plugin (entry point ``pytest11``): fixtures for meda and its plugin authors."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meda_core.backends import context as backend_views
from meda_core.backends.manager import PluginManager
from meda_core.backends.roles import BackendContext
from meda_core.facade import Meda
from meda_core.settings import Settings
from meda_core.state.store import StateStore
from meda_core.testing import namespaces, registry
from meda_core.testing.fakes import FakePlugin
from meda_core.testing.guest import BootableGuest, GuestBuildError, build_test_guest, default_cache


def wait_for_text(path: Path, text: str, timeout: float = 60.0) -> float:
    """Wait until ``path`` contains ``text``; seconds waited, or AssertionError on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if path.exists() and text in path.read_text(errors="replace"):
            return time.monotonic() - started
        time.sleep(0.05)
    tail = path.read_text(errors="replace")[-2000:] if path.exists() else "(no file)"
    raise AssertionError(f"'{text}' not in {path} after {timeout}s; it ends with:\n{tail}")


@pytest.fixture
def meda_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings with ``MEDA_HOME`` in a fresh temporary directory; a test changes others
    with ``@pytest.mark.parametrize("meda_settings", [{...}], indirect=True)``."""
    changes = getattr(request, "param", {})
    return Settings(**{"home": tmp_path / "meda-home", "stop_timeout": 10, **changes})


@pytest.fixture
def backend_context(meda_settings: Settings) -> BackendContext:
    meda_settings.home.mkdir(parents=True, exist_ok=True)
    return backend_views.backend_context(meda_settings, StateStore(meda_settings.db_path))


@pytest.fixture
def fake_meda(meda_settings: Settings) -> Iterator[Meda]:
    """A :class:`Meda` with only the fake backends: fast, no hypervisor needed."""
    plugins = PluginManager()
    plugins.add_plugin("fake", FakePlugin())
    meda = Meda(meda_settings, plugins)
    yield meda
    meda.vms.delete_all()


@contextlib.contextmanager
def made_namespace() -> Iterator[str]:
    """A network namespace made here; afterwards it must be as it was made (see ``netns``)."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.skip("network namespaces need root, iproute2 and nftables")
    name = namespaces.create()
    try:
        before = namespaces.snapshot(name)
        with pytest.MonkeyPatch.context() as env:
            env.setenv("MEDA_NETNS_UPLINK", "0")
            env.setenv("MEDA_FORWARD_ADDRESS", "127.0.0.1")
            yield name
        after = namespaces.snapshot(name)
        assert after == before, f"namespace {name} not left as it was: {before} -> {after}"
    finally:
        namespaces.destroy(name)


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace made for the test; afterwards it must be as it was made.

    While it lives, ``MEDA_NETNS_UPLINK=0``: a meda told to use it as MEDA_NETNS from the
    test's own namespace (the host's) must not link the two; a test that wants the uplink
    runs meda inside a namespace of its own and says so. And ``MEDA_FORWARD_ADDRESS=127.0.0.1``:
    a forward's listener in the host's namespace is not reachable from beyond this host."""
    with made_namespace() as name:
        yield name


@pytest.fixture
def oci_registry(tmp_path: Path) -> Iterator[str]:
    """A real registry (Debian's docker-registry) on 127.0.0.1; yields ``host:port``."""
    if shutil.which(registry.BINARY) is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    with registry.local_registry(tmp_path / "registry") as address:
        yield address


@pytest.fixture
def oci_registry_with_auth(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A registry that wants basic auth (htpasswd); yields ``(host:port, user, password)``."""
    if shutil.which(registry.BINARY) is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    bcrypt = pytest.importorskip("bcrypt")
    user, password = "meda", secrets.token_urlsafe(16)
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{user}:{hashed}\n")
    with registry.local_registry(tmp_path / "registry-auth", htpasswd) as address:
        yield address, user, password


@pytest.fixture(scope="session")
def test_guest() -> BootableGuest:
    """Debian's cloud kernel and a busybox initramfs that prints a boot marker (cached)."""
    if shutil.which(os.environ.get("MEDA_QEMU_BINARY", "qemu-system-x86_64")) is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    cache = Path(os.environ.get("MEDA_TEST_GUEST_CACHE", default_cache()))
    try:
        return build_test_guest(cache)
    except GuestBuildError as exc:
        pytest.fail(f"cannot build the test guest: {exc}")
