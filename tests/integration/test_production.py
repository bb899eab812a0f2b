"""``meda serve`` in production: HTTPS (and nothing in plain HTTP on its port), and a
SIGTERM that lets in-flight requests finish and never stops a VM."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from meda_core.testing.guest import BOOT_MARKER
from meda_core.testing.host import processes_mentioning, self_signed_certificate
from meda_core.testing.pytest_plugin import wait_for_text
from tests.integration.conftest import RunMeda, StartServer

pytestmark = pytest.mark.vm


def test_https_only(start_server: StartServer, run_meda: RunMeda, tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    server = start_server("--tls-cert", str(cert), "--tls-key", str(key), ca_file=cert)
    with server.client() as api:
        assert api.get("/health").status_code == 200
        assert api.post("/vms", json={"name": "secure", "memory": "128M"}).status_code == 201
    listed = run_meda(
        "list",
        "--json",
        env={"MEDA_URL": f"https://127.0.0.1:{server.port}", "MEDA_CA_FILE": str(cert)},
    )
    assert listed.returncode == 0, listed.stderr
    assert "secure" in listed.stdout
    unverified = run_meda("list", env={"MEDA_URL": f"https://127.0.0.1:{server.port}"})
    assert unverified.returncode == 5  # an unknown certificate: refused, not ignored
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/api/v1/health", timeout=5)


def test_sigterm_finishes_requests_and_leaves_vms_running(start_server: StartServer) -> None:
    server = start_server()
    with server.client() as api:
        for name in ("stay", "slow"):
            assert api.post("/vms", json={"name": name, "memory": "128M"}).status_code == 201
            assert api.post(f"/vms/{name}/start").status_code == 200
        stay = api.get("/vms/stay").json()
        # Booted, it powers off at the ACPI button (before, it would wait the stop timeout).
        wait_for_text(Path(api.get("/vms/slow").json()["details"]["console_log"]), BOOT_MARKER)
    answers: list[int] = []

    def stop_slowly() -> None:  # an ACPI power-off: it takes the guest a moment
        with server.client() as api:
            answers.append(api.post("/vms/slow/stop").status_code)

    in_flight = threading.Thread(target=stop_slowly)
    in_flight.start()
    time.sleep(0.3)
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    in_flight.join(60)
    assert answers == [200]  # the request under way was answered
    # uvicorn shuts down, then re-raises the signal so the exit status tells of it.
    assert server.process.wait(60) in (0, -signal.SIGTERM)
    server.process = None
    assert processes_mentioning(stay["details"]["vm_dir"]) == [stay["details"]["pid"]]

    server.start()
    with server.client() as api:
        assert api.get("/vms/stay").json()["state"] == "running"
        assert api.get("/vms/slow").json()["state"] == "stopped"
