"""``meda exec`` and ``meda cp`` against the fake hypervisor and agent, on this host and
through a server (``MEDA_URL``)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from meda_cli import context
from meda_cli.main import app
from meda_core.facade import Meda
from meda_core.models import ExecResult
from meda_core.testing.fakes import AGENT_SOCKET
from tests.conftest import ServeApi

runner = CliRunner()
TOKEN = "exec-token-0123456789"


@pytest.fixture
def vm(fake_meda: Meda, running_vm: str) -> Iterator[str]:
    context.use(fake_meda)
    yield running_vm
    context.use(None)


@pytest.fixture(params=["local", "remote"])
def env(
    request: pytest.FixtureRequest, fake_meda: Meda, vm: str, serve_api: ServeApi
) -> Iterator[dict[str, str]]:
    """The environment of a ``meda`` run on this host, or against a server."""
    if request.param == "local":
        yield {"MEDA_URL": ""}
        return
    yield {"MEDA_URL": serve_api(fake_meda, token=TOKEN), "MEDA_API_TOKEN": TOKEN}
    context.use_server(None)


def meda(env: dict[str, str], *args: str, stdin: bytes | None = None) -> Any:
    return runner.invoke(app, list(args), env=env, input=stdin)


def test_output_streams_apart_and_the_exit_code_passes_through(env: dict[str, str]) -> None:
    result = meda(env, "exec", "vm1", "--", "sh", "-c", "echo out; echo err >&2; exit 42")
    assert (result.exit_code, result.stdout, result.stderr) == (42, "out\n", "err\n")


def test_a_signal_is_128_plus_it(env: dict[str, str]) -> None:
    assert meda(env, "exec", "vm1", "--", "sh", "-c", "kill -TERM $$").exit_code == 128 + 15


def test_env_cwd_and_stdin(env: dict[str, str], fake_meda: Meda) -> None:
    (fake_meda.vms.get("vm1").vm_dir / "fake-agent-root" / "w").mkdir(parents=True)
    args = [
        "exec",
        "vm1",
        "-e",
        "A=b c",
        "--cwd",
        "/w",
        "-i",
        "--",
        "sh",
        "-c",
        'cat; echo "$A"; ls -a',
    ]
    result = meda(env, *args, stdin=b"from stdin\n")
    assert result.exit_code == 0
    assert result.stdout == "from stdin\nb c\n.\n..\n"


def test_without_stdin_the_command_reads_end_of_file(env: dict[str, str]) -> None:
    result = meda(env, "exec", "vm1", "--", "cat")
    assert (result.exit_code, result.stdout) == (0, "")


def test_json_prints_the_result_model(env: dict[str, str]) -> None:
    result = meda(env, "exec", "vm1", "--json", "--", "sh", "-c", "echo hi; exit 3")
    assert result.exit_code == 3
    assert ExecResult.model_validate_json(result.stdout).stdout == "hi\n"


def test_meda_errors_keep_their_exit_codes(env: dict[str, str], fake_meda: Meda) -> None:
    assert meda(env, "exec", "nope", "--", "true").exit_code == 3
    assert meda(env, "exec", "vm1").exit_code == 2  # no command
    timed_out = meda(env, "exec", "vm1", "--timeout", "0.5", "--", "sleep", "30")
    assert timed_out.exit_code == 124 and "timeout" in timed_out.stderr
    fake_meda.settings.agent_timeout = 0.2
    (fake_meda.vms.get("vm1").vm_dir / AGENT_SOCKET).unlink()
    no_agent = meda(env, "exec", "vm1", "--json", "--", "true")
    assert no_agent.exit_code == 10
    assert json.loads(no_agent.stderr)["code"] == "NO_AGENT"


def test_cp_a_file_in_and_out(env: dict[str, str], tmp_path: Path) -> None:
    data = os.urandom(300_000)
    (tmp_path / "in.bin").write_bytes(data)
    (tmp_path / "in.bin").chmod(0o640)
    put = meda(env, "cp", str(tmp_path / "in.bin"), "vm1:/", "--json")
    assert put.exit_code == 0, put.stderr
    assert json.loads(put.stdout)["sha256"] == hashlib.sha256(data).hexdigest()
    assert meda(env, "cp", "vm1:/in.bin", str(tmp_path / "out.bin")).exit_code == 0
    assert (tmp_path / "out.bin").read_bytes() == data
    mode = meda(env, "exec", "vm1", "--cwd", "/", "--", "stat", "-c", "%a", "in.bin").stdout
    assert mode == "640\n"


def test_cp_a_directory_goes_as_tar(env: dict[str, str], tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha")
    (tree / "sub" / "b.bin").write_bytes(bytes(range(256)))
    assert meda(env, "cp", str(tree), "vm1:/srv/tree").exit_code == 0
    result = meda(env, "cp", "vm1:/srv/tree", str(tmp_path / "back"))
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "back" / "sub" / "b.bin").read_bytes() == bytes(range(256))
    assert (tmp_path / "back" / "a.txt").read_text() == "alpha"


def test_cp_needs_exactly_one_guest_side(env: dict[str, str], tmp_path: Path) -> None:
    assert meda(env, "cp", str(tmp_path), str(tmp_path)).exit_code == 2
    assert meda(env, "cp", "vm1:/a", "vm1:/b").exit_code == 2
    assert meda(env, "cp", str(tmp_path), "vm1:relative").exit_code == 2
    assert meda(env, "cp", "vm1:/missing", str(tmp_path / "x")).exit_code == 3
