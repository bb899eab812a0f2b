"""``GET /vms/{name}/wait`` and ``meda wait`` against ``meda serve`` with the test guest:
an address, its HTTP server on port 80 (probed from meda's namespace) and its agent."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from meda_core.testing.guest import BOOT_MARKER, HTTP_PAGE
from meda_core.testing.namespaces import run_in
from tests.integration.conftest import RunMeda, Server

pytestmark = pytest.mark.vm


def _wait_in_thread(
    server: Server, name: str, params: dict[str, Any]
) -> tuple[threading.Thread, list[httpx.Response]]:
    """``GET /vms/{name}/wait`` sent from a thread; its response lands in the list."""
    answers: list[httpx.Response] = []

    def wait() -> None:
        with server.client() as api:
            answers.append(api.get(f"/vms/{name}/wait", params=params, timeout=300))

    thread = threading.Thread(target=wait)
    thread.start()
    return thread, answers


def test_a_wait_from_before_the_start_answers_once_the_guest_serves(
    server: Server, netns: str, run_meda: RunMeda
) -> None:
    with server.client() as api:
        assert api.post("/vms", json={"name": "web", "memory": "256M"}).status_code == 201
        # Waited for while stopped: it may be started, and then it is.
        thread, answers = _wait_in_thread(server, "web", {"for": ["ip", "port:80"], "timeout": 240})
        time.sleep(1.5)
        assert thread.is_alive() and not answers
        started = time.monotonic()
        assert api.post("/vms/web/start").status_code == 200
        thread.join(300)
        took = time.monotonic() - started
        answer = answers[0]
        assert answer.status_code == 200, answer.text
        vm = answer.json()
        assert vm["state"] == "running" and vm["ip"] == api.get("/vms/web/ip").json()["ip"]
        print(f"ip and port:80 held {took:.1f}s after the start")
        # It answered because the guest serves: its page is there, from meda's namespace.
        assert BOOT_MARKER in Path(vm["details"]["console_log"]).read_text(errors="replace")
        page = run_in(netns, "curl", "-s", "-m", "10", f"http://{vm['ip']}/", check=False)
        assert page.strip() == HTTP_PAGE

        # The agent answers too; a port nobody serves does not, with why.
        agent = api.get("/vms/web/wait", params={"for": "agent", "timeout": 120})
        assert agent.status_code == 200, agent.text
        refused = api.get("/vms/web/wait", params={"for": ["ip", "port:81"], "timeout": 3})
        assert refused.status_code == 408, refused.text
        assert refused.json()["details"]["pending"] == ["port:81"]
        assert "refused" in refused.json()["error"]

        env = {"MEDA_URL": server.url}
        done = run_meda("wait", "web", "--for", "port:80", "--for", "agent", "--json", env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["name"] == "web"
        late = run_meda("wait", "web", "--for", "port:81", "--timeout", "1", env=env)
        assert late.returncode == 124 and "port:81" in late.stderr

        # Deleted while waited for: 404 as soon as it goes, not at the timeout.
        thread, answers = _wait_in_thread(server, "web", {"for": "stopped", "timeout": 240})
        time.sleep(1.0)
        deleting = time.monotonic()
        assert api.delete("/vms/web").status_code == 200
        thread.join(60)
        assert answers[0].status_code == 404, answers[0].text
        assert time.monotonic() - deleting < 15
