"""CLI commands against the fake backends: --json models, tables, exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meda_cli import context
from meda_cli.main import app
from meda_core.app import Meda
from meda_core.models import OperationResult, VMInfo, VMList

runner = CliRunner()


@pytest.fixture(autouse=True)
def cli_meda(fake_meda: Meda) -> Iterator[Meda]:
    context.use(fake_meda)
    yield fake_meda
    context.use(None)


def meda(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_lifecycle_with_json(fake_image: str) -> None:
    code, out, _ = meda("create", "vm1", "--memory", "512M", "--cpus", "2", "--json")
    assert code == 0
    created = OperationResult.model_validate_json(out)
    assert created.vm is not None and created.vm.details.memory == "512M"
    assert meda("start", "vm1")[0] == 0
    info = VMInfo.model_validate_json(meda("get", "vm1", "--json")[1])
    assert info.state == "running"
    listing = VMList.model_validate_json(meda("list", "--json")[1])
    assert listing.count == 1
    assert meda("stop", "vm1", "--json")[0] == 0
    assert meda("delete", "vm1")[0] == 0
    assert VMList.model_validate_json(meda("list", "--json")[1]).count == 0


def test_human_output_is_a_table(fake_image: str) -> None:
    meda("create", "vm1")
    code, out, _ = meda("list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:3] == ["NAME", "STATE", "IP"]
    assert row.split()[:2] == ["vm1", "stopped"]


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (("get", "nope"), 3, "not found"),
        (("create", "Bad_Name"), 2, "invalid"),
        (("create", "ok", "--memory", "lots"), 2, "invalid size"),
        (("stop", "nope"), 3, "not found"),
    ],
)
def test_errors_go_to_stderr_with_exit_codes(
    fake_image: str, args: tuple[str, ...], exit_code: int, message: str
) -> None:
    code, out, err = meda(*args)
    assert code == exit_code
    assert out == ""
    assert message in err


def test_conflict_exit_code_and_json_error(fake_image: str) -> None:
    meda("create", "vm1")
    code, _, err = meda("create", "vm1", "--json")
    assert code == 4
    assert json.loads(err)["code"] == "VM_EXISTS"


def test_images_import_and_list(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    assert meda("images", "import", "tiny:v1", "--kernel", str(kernel))[0] == 0
    listing = json.loads(meda("images", "list", "--json")[1])
    assert [(i["name"], i["tag"]) for i in listing["images"]] == [("tiny", "v1")]


def test_plugins_json() -> None:
    code, out, _ = meda("plugins", "--json")
    assert code == 0
    assert {b["name"] for b in json.loads(out)["backends"]} == {"fake"}


def test_ip_and_port_forward_commands(fake_image: str) -> None:
    meda("create", "vm1")
    assert meda("ip", "vm1") == (0, "10.99.0.2\n", "")
    code, out, _ = meda("port-forward", "vm1", "18090", "80", "--json")
    assert code == 0 and json.loads(out)["forward"]["host_port"] == 18090
    assert meda("port-forward", "vm1", "18090", "80")[0] == 4
    listing = json.loads(meda("port-forward", "vm1", "--list", "--json")[1])
    assert listing["count"] == 1
    assert meda("port-forward", "vm1", "18090", "--remove")[0] == 0
    assert json.loads(meda("port-forward", "vm1", "--json")[1])["count"] == 0


def test_cleanup_dry_run(fake_image: str) -> None:
    code, out, _ = meda("cleanup", "--dry-run", "--json")
    assert code == 0
    assert json.loads(out) == {"dry_run": True, "orphans": [], "count": 0, "message": None}


def test_image_commands(fake_image: str) -> None:
    remote = "127.0.0.1:1/cirunlabs/default:v1"
    code, out, _ = meda("push", "default", remote, "--json")
    assert code == 0 and json.loads(out)["digest"].startswith("sha256:")
    code, out, _ = meda("pull", remote)
    assert code == 0 and "Pulled" in out
    code, out, _ = meda("run", "default:v1", "--name", "r1", "--json")
    assert code == 0 and json.loads(out)["vm"]["state"] == "running"
    listing = json.loads(meda("images", "--json")[1])
    assert {i["tag"]: i["used_by"] for i in listing["images"]} == {"latest": [], "v1": ["r1"]}
    assert meda("rmi", "default:v1")[0] == 4  # r1 uses it
    assert meda("delete", "r1")[0] == 0
    code, out, _ = meda("prune", "--force", "--json")
    assert code == 0 and json.loads(out)["removed_images"] == ["default:v1"]
    assert meda("rmi", "default")[0] == 0
    assert json.loads(meda("images", "list", "--json")[1])["count"] == 0


def test_create_image_command(fake_image: str) -> None:
    meda("create", "src")
    code, out, _ = meda("create-image", "snap", "--from-vm", "src", "--tag", "v1", "--json")
    assert code == 0 and json.loads(out)["image"]["name"] == "snap"


def test_user_data_file_is_read_by_the_client(
    fake_image: str, cli_meda: Meda, tmp_path: Path
) -> None:
    cloud_config = tmp_path / "ud.yaml"
    cloud_config.write_text("#cloud-config\nhostname: x\n")
    assert meda("create", "vm1", "--user-data", str(cloud_config))[0] == 0
    assert cli_meda.vms.get("vm1").user_data == "#cloud-config\nhostname: x\n"
    code, _, err = meda("create", "vm2", "--user-data", str(tmp_path / "missing"))
    assert code == 2 and "cannot read" in err
