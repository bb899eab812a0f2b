"""Swagger UI and ReDoc render in a real browser on a host without internet: Chromium and
``meda serve`` run in a namespace where only loopback is up, and the pages show meda's
operations having asked nothing of any other host."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meda_core.testing import namespaces

PORT = 7777  # the namespace has a loopback of its own: the default port is free there


@dataclass
class Render:
    dom: str
    urls: set[str]  # every URL the browser requested, from its net log
    seconds: float


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium: skipped without it, except in CI, where scripts/setup.sh put it."""
    found = shutil.which("chromium")
    if found is None:
        reason = "needs Debian's chromium (apt-get install chromium; scripts/setup.sh does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest.fixture
def offline_server(netns: str, tmp_path: Path) -> Iterator[str]:
    """``meda serve`` in ``netns`` with loopback up and no route anywhere; its URL."""
    namespaces.run_in(netns, "ip", "link", "set", "lo", "up")
    for family in ("-4", "-6"):
        routes = namespaces.run_in(netns, "ip", family, "route", "show", "table", "all")
        assert all(" dev lo " in f"{route} " for route in routes.splitlines()), routes
    env = {**os.environ, "MEDA_HOME": str(tmp_path / "home")}
    log_path = tmp_path / "server.log"
    argv = [
        "ip",
        "netns",
        "exec",
        netns,
        sys.executable,
        "-m",
        "meda_cli.main",
        "serve",
        "--port",
        str(PORT),
    ]
    with log_path.open("wb") as log:
        server = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not namespaces.connects(netns, "127.0.0.1", PORT, timeout=0.5):
            came_up = server.poll() is None and time.monotonic() < deadline
            assert came_up, log_path.read_text()
            time.sleep(0.1)
        yield f"http://127.0.0.1:{PORT}"
    finally:
        server.terminate()
        server.wait(30)


def render(chromium: str, netns: str, url: str, folder: Path) -> Render:
    """Open ``url`` in headless Chromium inside ``netns``: the DOM once rendered."""
    netlog = folder / "net.json"
    argv = [
        "ip",
        "netns",
        "exec",
        netns,
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-features=SpellCheck,AutofillServerCommunication",
        f"--user-data-dir={folder / 'profile'}",
        f"--log-net-log={netlog}",
        "--virtual-time-budget=30000",
        "--dump-dom",
        url,
    ]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    return Render(done.stdout, page_requests(netlog), seconds)


def page_requests(netlog: Path) -> set[str]:
    """The URLs requested for a web page (Chromium's own update checks and the like have
    no site in their network isolation key)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    jobs = [e.get("params", {}) for e in log["events"] if e["type"] == start]
    pages = [job for job in jobs if job.get("network_isolation_key", "null null") != "null null"]
    return {job["url"] for job in pages if "url" in job}


def only_from(server: str, urls: set[str]) -> set[str]:
    """The URLs in ``urls`` that are not ``server``'s."""
    return {url for url in urls if not url.startswith(server + "/")}


def test_swagger_ui_renders_offline(
    chromium: str, netns: str, offline_server: str, tmp_path: Path
) -> None:
    page = render(chromium, netns, f"{offline_server}/swagger-ui", tmp_path)
    operations = re.findall(
        r'class="opblock opblock-(get|post|delete)".*?data-path="([^"]+)"', page.dom
    )
    assert ("get", "/api/v1/vms") in operations, page.dom[:3000]
    assert ("post", "/api/v1/vms/{name}/start") in operations
    assert len(operations) >= 20  # every operation of the document, not just a shell
    assert only_from(offline_server, page.urls) == set()
    assert f"{offline_server}/static/docs/swagger-ui-bundle.js?" in " ".join(page.urls)
    print(f"Swagger UI rendered in {page.seconds:.1f} s (Chromium start included)")


def test_redoc_renders_offline(
    chromium: str, netns: str, offline_server: str, tmp_path: Path
) -> None:
    page = render(chromium, netns, f"{offline_server}/redoc", tmp_path)
    operations = set(re.findall(r'id="tag/[^/"]+/operation/([a-z_]+)"', page.dom))
    assert {"list_vms", "create_vm", "start_vm", "delete_vm"} <= operations, page.dom[:3000]
    assert len(operations) >= 20
    assert only_from(offline_server, page.urls) == set()  # no web fonts, no logo from a CDN
    print(f"ReDoc rendered in {page.seconds:.1f} s (Chromium start included)")


def test_the_net_log_sees_what_a_page_fetches(
    chromium: str, netns: str, offline_server: str, tmp_path: Path
) -> None:
    """The check above can fail: a page that names another host shows up in the log."""
    (tmp_path / "page.html").write_text(
        '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">'
    )
    page = render(chromium, netns, (tmp_path / "page.html").as_uri(), tmp_path)
    assert "https://fonts.googleapis.com/css?family=Roboto" in only_from(offline_server, page.urls)
