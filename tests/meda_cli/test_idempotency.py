"""``--idempotency-key``: create, run, clone and pull run again answer as the first run did."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from meda_cli import context
from meda_cli.main import app
from meda_core.errors import IdempotencyMismatch, InvalidRequest
from meda_core.facade import Meda
from tests.conftest import ServeApi

runner = CliRunner()


@pytest.fixture
def server_url(fake_meda: Meda, fake_image: str, serve_api: ServeApi) -> Iterator[str]:
    yield serve_api(fake_meda)
    context.use_server(None)


def meda(url: str | None, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"MEDA_URL": url or "", "MEDA_API_TOKEN": ""})
    return result.exit_code, result.stdout, result.stderr


def test_create_run_again_with_its_key_answers_as_the_first(
    server_url: str, fake_meda: Meda
) -> None:
    first = meda(server_url, "create", "web", "--idempotency-key", "k1", "--json")
    assert first[0] == 0, first[2]
    assert meda(server_url, "create", "web", "--idempotency-key", "k1", "--json") == first
    assert [vm.name for vm in fake_meda.vms.list()] == ["web"]
    code, _, err = meda(server_url, "create", "db", "--idempotency-key", "k1", "--json")
    assert code == IdempotencyMismatch.exit_code == InvalidRequest.exit_code
    assert json.loads(err)["code"] == "IDEMPOTENCY_MISMATCH"
    assert [vm.name for vm in fake_meda.vms.list()] == ["web"]


def test_run_and_clone_take_a_key(server_url: str, fake_meda: Meda) -> None:
    run = ("run", "default", "--name", "r1", "--idempotency-key", "k-run", "--json")
    first = meda(server_url, *run)
    assert first[0] == 0, first[2]
    assert meda(server_url, *run)[1] == first[1]
    assert [vm.name for vm in fake_meda.vms.list()] == ["r1"]
    assert meda(server_url, "create", "tpl", "--template")[0] == 0
    assert meda(server_url, "start", "tpl")[0] == 0
    assert meda(server_url, "snapshot", "tpl")[0] == 0
    clone = ("clone", "tpl", "c1", "--idempotency-key", "k-clone", "--json")
    first = meda(server_url, *clone)
    assert first[0] == 0, first[2]
    assert meda(server_url, *clone)[1] == first[1]
    assert sorted(vm.name for vm in fake_meda.vms.list()) == ["c1", "r1", "tpl"]


def test_pull_takes_a_key(server_url: str, fake_meda: Meda) -> None:
    remote = "127.0.0.1:1/o/pulled:v1"
    assert meda(server_url, "push", "default", remote)[0] == 0
    pull = ("pull", remote, "--idempotency-key", "k-pull", "--json")
    first = meda(server_url, *pull)
    assert first[0] == 0, first[2]
    assert meda(server_url, *pull)[1] == first[1]


def test_a_bad_key_is_refused_before_anything_is_sent(server_url: str, fake_meda: Meda) -> None:
    code, _, err = meda(server_url, "create", "web", "--idempotency-key", "x" * 256)
    assert code == InvalidRequest.exit_code and "Idempotency-Key" in err
    assert fake_meda.vms.list() == []


def test_a_key_needs_a_server(fake_meda: Meda, fake_image: str) -> None:
    context.use(fake_meda)
    try:
        code, _, err = meda(None, "create", "web", "--idempotency-key", "k1")
    finally:
        context.use(None)
    assert code == InvalidRequest.exit_code and "needs a server" in err
    assert fake_meda.vms.list() == []
