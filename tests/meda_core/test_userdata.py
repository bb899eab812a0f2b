"""user_data in: content, allowed paths, forbidden paths; and the seed meda builds."""

from __future__ import annotations

import email
import io
from pathlib import Path

import pycdlib
import pytest
import yaml

from meda_core.errors import InvalidRequest
from meda_core.facade import Meda
from meda_core.models import CreateVMRequest
from meda_core.vms import userdata

CLOUD_CONFIG = "#cloud-config\nwrite_files:\n  - path: /etc/meda-test\n    content: hello\n"


def test_content_is_kept_and_the_seed_carries_it(fake_meda: Meda, fake_image: str) -> None:
    vm = fake_meda.vms.create(CreateVMRequest(name="vm1", user_data=CLOUD_CONFIG))
    assert vm.user_data == CLOUD_CONFIG
    fake_meda.vms.start("vm1")
    files = _iso_files(vm.vm_dir / "seed.iso")
    assert yaml.safe_load(files["meta-data"]) == {"instance-id": vm.uuid, "local-hostname": "vm1"}
    user = yaml.safe_load(files["user-data"])
    assert user["write_files"][0]["path"] == "/etc/meda-test"
    assert user["users"][0] == "default" and user["users"][1]["name"] == "meda"
    assert user["users"][1]["ssh_authorized_keys"][0].startswith("ssh-ed25519 ")
    assert user["ssh_pwauth"] is False
    net = yaml.safe_load(files["network-config"])
    eth0 = net["ethernets"]["eth0"]
    assert eth0["match"] == {"macaddress": vm.mac} and eth0["set-name"] == "eth0"


def test_managed_key_is_private(fake_meda: Meda, fake_image: str) -> None:
    fake_meda.vms.create(CreateVMRequest(name="vm1"))
    fake_meda.vms.start("vm1")
    key = fake_meda.settings.home / "ssh" / "id_ed25519"
    assert key.stat().st_mode & 0o777 == 0o600


def test_default_user_data_gives_the_meda_user(fake_meda: Meda, fake_image: str) -> None:
    vm = fake_meda.vms.create(CreateVMRequest(name="vm1"))
    fake_meda.vms.start("vm1")
    user = yaml.safe_load(_iso_files(vm.vm_dir / "seed.iso")["user-data"])
    assert user["users"][1]["sudo"] == "ALL=(ALL) NOPASSWD:ALL"


def test_a_script_goes_beside_meda_cloud_config() -> None:
    rendered = userdata.render("#!/bin/sh\necho hi\n", "ssh-ed25519 AAAA meda")
    parts = [p.get_content_type() for p in email.message_from_string(rendered).walk()]
    assert parts == ["multipart/mixed", "text/cloud-config", "text/x-shellscript"]


def test_allowed_path_is_read(fake_meda: Meda, fake_image: str, tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "ud.yaml").write_text(CLOUD_CONFIG)
    fake_meda.settings.user_data_dirs = str(allowed)
    vm = fake_meda.vms.create(CreateVMRequest(name="vm1", user_data=str(allowed / "ud.yaml")))
    assert vm.user_data == CLOUD_CONFIG


@pytest.mark.parametrize(
    "value",
    ["/etc/shadow", "/tmp/../etc/passwd", "~/.ssh/id_rsa", "just some words", "#cloud-config\n: ["],
)
def test_forbidden_paths_and_bad_content_are_400_and_create_nothing(
    fake_meda: Meda, fake_image: str, tmp_path: Path, value: str
) -> None:
    fake_meda.settings.user_data_dirs = str(tmp_path / "allowed")
    with pytest.raises(InvalidRequest):
        fake_meda.vms.create(CreateVMRequest(name="vm1", user_data=value))
    assert fake_meda.vms.list() == []
    assert not (fake_meda.settings.vms_dir / "vm1").exists()


def test_symlink_out_of_an_allowed_dir_is_refused(fake_meda: Meda, tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "link").symlink_to("/etc/passwd")
    with pytest.raises(InvalidRequest, match="not in a directory"):
        userdata.resolve(str(allowed / "link"), [allowed])


def _iso_files(path: Path) -> dict[str, str]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    assert iso.pvd.volume_identifier.decode().strip() == "cidata"
    found = {}
    for name in ("meta-data", "user-data", "network-config"):
        out = io.BytesIO()
        try:
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
        except pycdlib.pycdlibexception.PyCdlibInvalidInput:
            continue
        found[name] = out.getvalue().decode()
    iso.close()
    return found
