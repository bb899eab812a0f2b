"""A real Debian guest: built by meda, configured by cloud-init, reached over SSH."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meda_core.facade import Meda
from meda_core.models import Image
from meda_core.settings import Settings
from meda_core.testing.host import free_port
from meda_core.testing.namespaces import OUTSIDE_NAME, OUTSIDE_PAGE, outside_world, run_in
from meda_core.testing.pytest_plugin import wait_for_text
from meda_core.vms.ssh import SSH_PORT, ssh_argv
from tests.integration.conftest import StartServer

WEB_PORT = free_port()  # forwards also listen on the host's loopback

pytestmark = [pytest.mark.vm, pytest.mark.alongside]  # its waits are minutes long
READY = "Cloud-init v."  # … "finished at": the final stage is over
USER_DATA = """#cloud-config
write_files:
  - path: /etc/meda-test
    content: written by user_data
runcmd:
  - [sh, -c, "hostname > /run/ran-as"]
  - [sh, -c, "mkdir -p /srv/www && echo MEDA-DEBIAN-HTTP > /srv/www/index.html"]
  - [sh, -c, "cd /srv/www && busybox httpd -p 8000"]
"""


WORLD_HOST, WORLD = "10.201.0.1", "10.201.0.2"


@pytest.fixture
def world(netns: str) -> Iterator[str]:
    """A machine beyond meda's network that serves DNS (outside.test) and a web page."""
    with outside_world(netns, WORLD_HOST, WORLD) as name:
        yield name


def test_debian_guest_user_data_ssh_forward_and_the_outside(
    world: str, start_server: StartServer, netns: str, debian_image: Image
) -> None:
    server = start_server(MEDA_DNS_SERVERS=WORLD)
    meda = Meda(Settings(home=server.home, netns=netns))
    meda.images.import_files(
        "debian:12",
        disk=debian_image.disk,
        kernel=debian_image.kernel,
        initrd=debian_image.initrd,
        cmdline=debian_image.cmdline,
    )
    with server.client() as api:
        started = time.monotonic()
        # cold: cloud-init runs for this VM (a clone of a warm template keeps the
        # template's first boot, hostname included).
        run = api.post(
            "/images/run",
            json={
                "image": "debian:12",
                "name": "deb-e2e",
                "memory": "1G",
                "cpus": 2,
                "disk": "4G",
                "user_data": USER_DATA,
                "cold": True,
            },
        )
        assert run.status_code == 201, run.text
        console = Path(run.json()["vm"]["details"]["console_log"])
        wait_for_text(console, "finished at", timeout=600)
        print(f"Debian guest ready (cloud-init final) {time.monotonic() - started:.0f}s after run")

        def ssh(*command: str) -> str:
            endpoint = meda.network.guest_endpoint("deb-e2e", SSH_PORT)
            argv = ssh_argv(meda.vms.get("deb-e2e"), endpoint, server.home, list(command), netns)
            result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            return result.stdout.strip()

        assert ssh("hostname") == "deb-e2e"
        assert ssh("cat", "/etc/meda-test") == "written by user_data"
        assert ssh("cat", "/run/ran-as") == "deb-e2e"
        assert ssh("sudo", "-n", "id", "-u") == "0"
        # The image's own agent answers too: no SSH, no key.
        cat = api.post("/vms/deb-e2e/exec", json={"command": ["cat", "/etc/meda-test"]})
        assert cat.status_code == 200, cat.text
        assert (cat.json()["exit_code"], cat.json()["stdout"].strip()) == (
            0,
            "written by user_data",
        )

        forward = api.post(
            "/vms/deb-e2e/port-forward", json={"host_port": WEB_PORT, "guest_port": 8000}
        )
        assert forward.status_code == 201, forward.text
        page = run_in(netns, "curl", "-s", "-m", "10", f"http://127.0.0.1:{WEB_PORT}/", check=False)
        assert page.strip() == "MEDA-DEBIAN-HTTP"

        # A usable machine: a default route, the gateway's DNS, and a way out (NAT).
        assert ssh("ip", "route", "show", "default").startswith("default via 192.168.100.1 ")
        assert ssh("getent", "hosts", OUTSIDE_NAME).split() == [WORLD, OUTSIDE_NAME]
        assert ssh("busybox", "wget", "-q", "-O", "-", f"http://{OUTSIDE_NAME}/") == OUTSIDE_PAGE
        assert api.delete("/vms/deb-e2e").status_code == 200
