"""``meda wait``: on this host and through a server, its output and its exit codes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from meda_cli import context
from meda_cli.main import app
from meda_core.errors import InvalidRequest, VMNotFound, WaitTimedOut
from meda_core.facade import Meda
from meda_core.models import VMInfo
from tests.conftest import ServeApi

runner = CliRunner()


@pytest.fixture(params=["local", "remote"])
def where(request: pytest.FixtureRequest, fake_meda: Meda, serve_api: ServeApi) -> Iterator[str]:
    """The CLI on the VM host (no server), or sent to a server with the same fake meda."""
    if request.param == "local":
        context.use(fake_meda)
        yield "local"
        context.use(None)
    else:
        yield serve_api(fake_meda)
        context.use_server(None)


def meda(where: str, *args: str) -> tuple[int, str, str]:
    env = {} if where == "local" else {"MEDA_URL": where}
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_it_prints_the_vm_once_it_runs(
    where: str, fake_meda: Meda, make_vm: Callable[..., Any]
) -> None:
    make_vm("vm1")
    starter = threading.Timer(0.5, lambda: fake_meda.vms.start("vm1"))
    starter.start()
    code, out, err = meda(where, "wait", "vm1", "--for", "running", "--for", "ip", "--json")
    starter.join()
    assert code == 0, err
    info = VMInfo.model_validate_json(out)
    assert info.state == "running" and info.ip is not None
    code, out, _ = meda(where, "wait", "vm1", "--for", "running")
    assert code == 0 and out.split() == ["vm1", "running", info.ip]


def test_the_timeout_exits_124_with_the_error(where: str, make_vm: Callable[..., Any]) -> None:
    make_vm("vm1")
    started = time.monotonic()
    code, _, err = meda(where, "wait", "vm1", "--for", "running", "--timeout", "0.5", "--json")
    assert code == WaitTimedOut.exit_code == 124
    assert 0.5 <= time.monotonic() - started < 5
    body = json.loads(err)
    assert body["code"] == "TIMEOUT" and body["details"]["pending"] == ["running"]
    code, _, err = meda(where, "wait", "vm1", "--for", "ip", "--timeout", "0")
    assert code == 124 and "after 0s" in err


def test_bad_input_and_missing_vms_exit_as_their_errors(
    where: str, make_vm: Callable[..., Any]
) -> None:
    make_vm("vm1")
    code, _, err = meda(where, "wait", "vm1", "--for", "port:70000")
    assert code == InvalidRequest.exit_code and "1 to 65535" in err
    assert meda(where, "wait", "vm1", "--for", "stopped", "--for", "ip")[0] == 2
    assert meda(where, "wait", "nope", "--for", "running")[0] == VMNotFound.exit_code
    assert meda(where, "wait", "vm1", "--for", "running", "--timeout", "3601")[0] == 2
    assert meda(where, "wait", "vm1")[0] == 2  # --for is required
