"""CLI commands against the fake backends: --json models, tables, exit codes."""

from __future__ import annotations

import importlib
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from meda_api import create_app
from meda_cli import context
from meda_cli.main import app
from meda_core import __version__
from meda_core.facade import Meda
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


def test_images_carry_a_ready_port_the_cli_sets_and_shows(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    assert meda("images", "import", "web", "--kernel", str(kernel), "--ready-port", "80")[0] == 0
    code, out, _ = meda("images")
    assert code == 0 and "READY PORT" in out and " 80 " in out
    code, _, err = meda("images", "import", "bad", "--kernel", str(kernel), "--ready-port", "70000")
    assert code == 2 and "ready port 70000" in err
    assert meda("create", "src", "--image", "web")[0] == 0
    code, out, _ = meda("create-image", "web2", "--from-vm", "src", "--json")
    assert code == 0 and json.loads(out)["image"]["ready_port"] == 80  # inherited
    code, out, _ = meda("create-image", "web3", "--from-vm", "src", "--ready-port", "0", "--json")
    assert code == 0 and json.loads(out)["image"]["ready_port"] is None


def test_plugins_json() -> None:
    code, out, _ = meda("plugins", "--json")
    assert code == 0
    assert {b["name"] for b in json.loads(out)["backends"]} == {"fake"}


def test_plugins_lists_a_misspelled_plugin_with_its_error(
    cli_meda: Meda, misspelled_plugin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(misspelled_plugin_dir))
    cli_meda.plugins.add_plugin("typo", importlib.import_module("meda_typo_plugin"))
    code, out, _ = meda("plugins", "--json")
    listed = {p["name"]: p for p in json.loads(out)["plugins"]}
    assert code == 0 and "unknown hook 'meda_register_backend'" in listed["typo"]["error"]
    code, out, _ = meda("plugins")
    assert code == 0 and "unknown hook" in out
    assert meda("list")[0] == 0


def test_ip_and_port_forward_commands(fake_image: str) -> None:
    meda("create", "vm1")
    assert meda("ip", "vm1") == (0, "10.99.0.2\n", "")
    code, out, _ = meda("port-forward", "vm1", "18090", "80", "--json")
    added = json.loads(out)["forward"]
    assert code == 0 and added["host_port"] == 18090 and added["address"] == "127.0.0.1:18090"
    assert meda("port-forward", "vm1", "18090", "80")[0] == 4
    listing = json.loads(meda("port-forward", "vm1", "--list", "--json")[1])
    assert listing["count"] == 1 and listing["forwards"][0]["address"] == "127.0.0.1:18090"
    code, text, _ = meda("port-forward", "vm1", "--list")
    assert code == 0 and "127.0.0.1:18090" in text  # the table says where to connect
    assert meda("port-forward", "vm1", "18091", "80")[1].endswith("connect to 127.0.0.1:18091\n")
    assert meda("port-forward", "vm1", "18091", "--remove")[0] == 0
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


def test_get_prints_text_for_people(fake_image: str) -> None:
    meda("create", "vm1", "--memory", "512M")
    meda("port-forward", "vm1", "2222", "22")
    code, out, _ = meda("get", "vm1")
    assert code == 0
    lines = dict(line.split(":", 1) for line in out.splitlines() if not line.startswith(" "))
    assert lines["name"].strip() == "vm1" and lines["memory"].strip() == "512M"
    assert lines["forwards"].strip() == "2222 -> 22/tcp"
    assert not any(mark in out for mark in ("{", "[", "datetime(", "host_port")), out


def test_version() -> None:
    code, out, _ = meda("--version")
    assert code == 0 and out.strip() == f"meda {__version__}"


def test_every_command_has_a_one_line_summary() -> None:
    """Wide or narrow, `meda --help` gives each command one line (no hard breaks)."""
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "250", "TERM": "dumb"})
    listing = result.stdout.split("Commands:")[1]
    rows = [line for line in listing.splitlines() if line.strip()]
    assert len(rows) > 10 and all(re.match(r"  [a-z-]+ +\S", row) for row in rows), listing


@pytest.mark.parametrize(
    ("args", "body"),
    [
        (("create", "Bad_Name"), {"name": "Bad_Name"}),
        (("create", "ok", "--cpus", "0"), {"name": "ok", "cpus": 0}),
    ],
)
def test_the_cli_and_the_api_say_the_same(
    fake_meda: Meda, fake_image: str, args: tuple[str, ...], body: dict[str, object]
) -> None:
    code, _, err = meda(*args, "--json")
    with TestClient(create_app(fake_meda), base_url="http://localhost") as client:
        answer = client.post("/api/v1/vms", json=body)
    assert code == 2 and answer.status_code == 400
    assert json.loads(err)["error"] == answer.json()["error"]
    assert "should match pattern" not in answer.json()["error"]  # words, not a regex


def test_a_bad_name_reads_the_same_wherever_it_is_given(fake_image: str) -> None:
    """In a body (create, clone) as in a path (get): the rule in words, not a regex."""
    messages = {
        meda(*args)[2]
        for args in (("create", "Bad_Name"), ("clone", "tpl", "Bad_Name"), ("get", "Bad_Name"))
    }
    assert len(messages) == 1, messages
    assert messages.pop().startswith("error: invalid VM name 'Bad_Name': use 1-63 lowercase")


def test_cleanup_before_the_namespace_exists(tmp_path: Path) -> None:
    """The operator's plan before the first VM (MEDA_NETNS_CREATE=1 has made nothing
    yet): answered, not a 503."""
    if os.geteuid() != 0:
        pytest.skip("the tap-bridge network needs root")
    absent = f"meda-absent-{secrets.token_hex(3)}"
    env = {
        **os.environ,
        "MEDA_HOME": str(tmp_path / "home"),
        "MEDA_NETNS": absent,
        "MEDA_NETNS_CREATE": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "meda_cli.main", "cleanup", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"'{absent}' (MEDA_NETNS) does not exist" in result.stdout
    assert "0 orphan(s) found" in result.stdout


def test_images_rmi_and_prune_are_there_too(fake_image: str) -> None:
    """`meda images rmi|prune`, as the README once said and docker users guess."""
    code, _, err = meda("images", "rmi", fake_image)
    assert code == 0, err
    assert meda("images", "--json")[1].count('"name"') == 0
    assert meda("images", "prune", "--force")[0] == 0
