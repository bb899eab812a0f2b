"""The console of a real QEMU guest through the API and the CLI: a follow opened before the
VM starts sees what the guest prints once it boots, and the log stays private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from meda_core.testing.guest import BOOT_MARKER
from tests.integration.conftest import RunMeda, Server, read_until

pytestmark = pytest.mark.vm


def test_follow_sees_what_the_guest_prints_after_the_request_began(
    server: Server, run_meda: RunMeda
) -> None:
    with server.client() as api:
        assert api.post("/vms", json={"name": "talker", "memory": "256M"}).status_code == 201
        request = api.build_request("GET", "/vms/talker/console", params={"follow": "true"})
        response = api.send(request, stream=True)
        try:
            assert response.status_code == 200
            assert api.post("/vms/talker/start").status_code == 200
            seen = read_until(response.iter_text(), BOOT_MARKER, timeout=120)
        finally:
            response.close()
        assert "\x00" not in seen
        log = Path(api.get("/vms/talker").json()["details"]["console_log"])
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        tail = api.get("/vms/talker/console", params={"tail": 5})
        assert tail.status_code == 200 and len(tail.text.splitlines()) <= 5
        env = {"MEDA_URL": server.url, "MEDA_API_TOKEN": server.env.get("MEDA_API_TOKEN", "")}
        logs = run_meda("logs", "talker", env=env)
        assert logs.returncode == 0, logs.stderr
        assert BOOT_MARKER in logs.stdout and "\x1b" not in logs.stdout
        assert api.delete("/vms/talker").status_code == 200
        assert api.get("/vms/talker/console").status_code == 404
        assert not log.exists()
