"""``meda logs`` and ``meda console``, on this host and through a server: the log as it is
or with the guest's escape sequences made visible, its tail, and a follow to its end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
from typer.testing import CliRunner

from meda_cli import context
from meda_cli.commands.console import visible
from meda_cli.main import app
from meda_core.facade import Meda
from meda_core.models import VM
from meda_core.vms.console import Follower
from tests.conftest import ServeApi

runner = CliRunner()
HOSTILE = b"\x1b]0;owned\x07\x1b[2Jtitle\r\n\x9b31m\x7f\tend\n"


@pytest.fixture(autouse=True)
def cli_meda(fake_meda: Meda) -> Iterator[Meda]:
    context.use(fake_meda)
    yield fake_meda
    context.use(None)
    context.use_server(None)


@pytest.fixture
def booted(fake_meda: Meda, make_vm: Callable[..., VM]) -> VM:
    """A stopped VM whose console says it booted, then what a hostile guest wrote."""
    vm = make_vm("vm1")
    fake_meda.vms.start("vm1")
    fake_meda.vms.stop("vm1")
    with vm.console_log.open("ab") as log:
        log.write(HOSTILE)
    return vm


def meda(*args: str, url: str | None = None) -> tuple[int, bytes, str]:
    result = runner.invoke(app, list(args), env={"MEDA_URL": url or ""})
    return result.exit_code, result.stdout_bytes, result.stderr


def _later(seconds: float, work: Callable[[], object]) -> None:
    threading.Timer(seconds, work).start()


def test_visible_shows_control_characters_as_cat_v_does() -> None:
    assert visible("\x1b[2J\x07\x00") == "^[[2J^G^@"
    assert visible("a\r\nb\rc\x7f\x9b") == "a\nb^Mc^?M-^["
    assert visible("tab\tand é ünïcode\n") == "tab\tand é ünïcode\n"


def test_logs_makes_the_guests_escapes_visible(booted: VM) -> None:
    code, out, _ = meda("logs", "vm1")
    assert code == 0
    assert out == b"fake VM vm1 booted\n^[]0;owned^G^[[2Jtitle\n\xef\xbf\xbd31m^?\tend\n"
    assert b"\x1b" not in out


def test_logs_raw_and_tail(booted: VM) -> None:
    code, out, _ = meda("logs", "vm1", "--raw", "--tail", "1")
    assert code == 0
    assert out == HOSTILE.split(b"\n")[1].replace(b"\x9b", b"\xef\xbf\xbd") + b"\n"
    assert meda("logs", "vm1", "-n", "1")[1] == b"\xef\xbf\xbd31m^?\tend\n"
    assert meda("logs", "vm1", "--tail", "-1")[0] == 2


def test_an_unknown_vm(fake_image: str) -> None:
    code, _, err = meda("logs", "nope")
    assert code == 3 and "nope" in err
    assert meda("console", "nope")[0] == 3


@pytest.mark.parametrize("where", ["here", "server"])
def test_follow_prints_what_comes_until_the_vm_is_deleted(
    fake_meda: Meda,
    booted: VM,
    serve_api: ServeApi,
    where: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = serve_api(fake_meda) if where == "server" else None
    following, read = threading.Event(), threading.Event()
    follow = fake_meda.consoles.follow

    def follow_and_tell(name: str, lines: int | None = None) -> tuple[bytes, Follower]:
        first, follower = follow(name, lines)
        read_on = follower.read

        def read_and_tell() -> bytes:
            data = read_on()
            if b"later" in data:
                read.set()
            return data

        monkeypatch.setattr(follower, "read", read_and_tell)
        following.set()
        return first, follower

    monkeypatch.setattr(fake_meda.consoles, "follow", follow_and_tell)

    def later() -> None:
        # Each step waits for the follower: a line written before the follow began is
        # the tail, not news; a deletion before the line was read would end it unread.
        assert following.wait(30)
        with booted.console_log.open("ab") as log:
            log.write(b"\x1b[1mlater\n")
        assert read.wait(30)
        fake_meda.vms.delete("vm1")

    _later(0, later)
    code, out, err = meda("logs", "vm1", "-f", "--tail", "0", url=url)
    assert code == 0, err
    assert out == b"^[[1mlater\n"
    assert booted.console_log.parent.exists() is False


def test_console_is_raw_and_ends_on_ctrl_c(
    fake_meda: Meda, booted: VM, serve_api: ServeApi
) -> None:
    url = serve_api(fake_meda)
    env = {**os.environ, "MEDA_URL": url, "MEDA_HOME": str(fake_meda.settings.home)}
    env.pop("MEDA_API_TOKEN", None)
    argv = [sys.executable, "-m", "meda_cli.main", "console", "vm1", "--tail", "1"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        first = process.stdout.read1(4096)  # what is there, at once
        assert first == HOSTILE.split(b"\n")[1].replace(b"\x9b", b"\xef\xbf\xbd") + b"\n"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
