"""The seed's image workflow against a real registry, with guests that really boot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meda_core.testing.guest import BOOT_MARKER, BootableGuest
from meda_core.testing.pytest_plugin import wait_for_text
from tests.integration.conftest import RunMeda, Server

pytestmark = pytest.mark.vm


def test_pull_run_create_push_rmi_pull(server: Server, oci_registry: str) -> None:
    with server.client() as api:
        pushed = api.post(
            "/images/push", json={"name": "guest", "image": "guest:v1", "registry": oci_registry}
        )
        assert pushed.status_code == 200, pushed.text

        # The seed's image workflow: pull → run → create an image from the VM.
        pulled = api.post("/images/pull", json={"image": "guest:v1", "registry": oci_registry})
        assert pulled.status_code == 200, pulled.text
        assert pulled.json()["digest"] == pushed.json()["digest"]
        # cold: the test reads the boot on the console (a clone's console starts later).
        run = api.post(
            "/images/run",
            json={
                "image": "guest:v1",
                "name": "ubuntu-vm",
                "memory": "256M",
                "cpus": 1,
                "cold": True,
            },
        )
        assert run.status_code == 201, run.text
        wait_for_text(Path(run.json()["vm"]["details"]["console_log"]), BOOT_MARKER, 60)
        busy = api.post(
            "/images", json={"name": "my-ubuntu", "tag": "v1.0", "from_vm": "ubuntu-vm"}
        )
        assert busy.status_code == 409  # running: its disk is not read
        assert api.post("/vms/ubuntu-vm/stop").status_code == 200
        created = api.post(
            "/images", json={"name": "my-ubuntu", "tag": "v1.0", "from_vm": "ubuntu-vm"}
        )
        assert created.status_code == 201, created.text
        assert api.delete("/images/guest:v1").status_code == 409  # ubuntu-vm uses it

        # push → rmi → pull gives the same digest, and the image boots.
        target = f"{oci_registry}/cirunlabs/my-ubuntu:v1.0"
        first = api.post("/images/push", json={"name": "my-ubuntu:v1.0", "image": target})
        assert first.status_code == 200, first.text
        assert api.delete("/images/my-ubuntu:v1.0").status_code == 200
        again = api.post("/images/pull", json={"image": target})
        assert again.json()["digest"] == first.json()["digest"]
        names = {(i["name"], i["tag"]) for i in api.get("/images").json()["images"]}
        assert ("my-ubuntu", "v1.0") in names
        reborn = api.post(
            "/images/run",
            json={"image": "my-ubuntu:v1.0", "name": "reborn", "memory": "256M", "cold": True},
        )
        assert reborn.status_code == 201, reborn.text
        wait_for_text(Path(reborn.json()["vm"]["details"]["console_log"]), BOOT_MARKER, 60)
        assert api.delete("/vms/reborn").status_code == 200
        assert api.delete("/vms/ubuntu-vm").status_code == 200
        pruned = api.post("/images/prune", json={"all": True, "force": True}).json()
        assert set(pruned["removed_images"]) >= {"my-ubuntu:v1.0", "guest:v1"}


def test_api_and_cli_list_the_same_images(server: Server, run_meda) -> None:  # type: ignore[no-untyped-def]
    with server.client() as api:
        listed = api.get("/images").json()
    env = {"MEDA_HOME": server.env["MEDA_HOME"], "MEDA_NETNS": server.env["MEDA_NETNS"]}
    cli = run_meda("images", "--json", env=env)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == listed


def test_an_import_without_cmdline_boots_or_is_refused_naming_the_flag(
    run_meda: RunMeda, test_guest: BootableGuest, tmp_path: Path
) -> None:
    """Before, a kernel imported with a disk and no --cmdline sat in its initramfs."""
    env = {"MEDA_NETWORK": "user", "MEDA_HYPERVISOR": "qemu", "MEDA_STORAGE": "qcow2"}
    disk = tmp_path / "root.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    refused = run_meda(
        "images",
        "import",
        "withdisk",
        "--kernel",
        str(test_guest.kernel),
        "--disk",
        str(disk),
        env=env,
    )
    assert refused.returncode == 2 and "--cmdline" in refused.stderr, refused.stderr
    assert "root=/dev/vda" in refused.stderr

    imported = run_meda(
        "images",
        "import",
        "plain",
        "--kernel",
        str(test_guest.kernel),
        "--initrd",
        str(test_guest.initrd),
        env=env,
    )
    assert imported.returncode == 0, imported.stderr
    listed = run_meda("images", "list", env=env)
    assert "withdisk" not in listed.stdout
    [row] = [line for line in listed.stdout.splitlines() if line.startswith("plain")]
    assert "console=ttyS0" in row
    created = run_meda("create", "booted", "--image", "plain", "--memory", "256M", env=env)
    assert created.returncode == 0, created.stderr
    try:
        assert run_meda("start", "booted", env=env).returncode == 0
        console = tmp_path / "cli-home" / "vms" / "booted" / "console.log"
        wait_for_text(console, BOOT_MARKER, timeout=60)  # its init ran
    finally:
        assert run_meda("delete", "booted", env=env).returncode == 0
