"""The guest agent end to end: exec, files and the console of a real QEMU guest through
``meda serve`` and the CLI; the conformance suite against the agent inside it; a guest
without an agent. One running guest serves the module (plus one without an agent)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meda_agent import MedaAgent
from meda_agent import link as agent_link
from meda_core.backends.roles import BackendContext
from meda_core.facade import Meda
from meda_core.plugin import AgentChannel, HypervisorBackend, Role
from meda_core.settings import Settings
from meda_core.testing.conformance import AgentConformance
from meda_core.testing.guest import BOOT_MARKER, build_test_guest, default_cache
from meda_core.testing.pytest_plugin import wait_for_text
from tests.integration.conftest import RunMeda, Server, StartServer, read_until

pytestmark = pytest.mark.vm

GUEST = "agent-vm"
#: MEDA_AGENT_TIMEOUT of the module's server: how long a guest without an agent costs.
AGENT_TIMEOUT = 3.0
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def agent_server(module_start_server: StartServer) -> Server:
    return module_start_server(MEDA_AGENT_TIMEOUT=str(AGENT_TIMEOUT))


@pytest.fixture(scope="module")
def guest(agent_server: Server) -> str:
    """The module's running test guest, once its agent answers: its name."""
    with agent_server.client() as api:
        assert api.post("/vms", json={"name": GUEST, "memory": "128M"}).status_code == 201
        assert api.post(f"/vms/{GUEST}/start").status_code == 200
        deadline = time.monotonic() + 120
        while True:
            answer = api.post(f"/vms/{GUEST}/exec", json={"command": ["true"]})
            if answer.status_code == 200:
                assert answer.json()["exit_code"] == 0
                break
            assert answer.status_code == 422, answer.text  # NO_AGENT while it boots
            assert time.monotonic() < deadline, f"the agent never answered: {answer.text}"
        # the test guest's initramfs has no /tmp; the tests write there as in most guests
        assert (
            api.post(f"/vms/{GUEST}/exec", json={"command": ["mkdir", "/tmp"]}).status_code == 200
        )
    return GUEST


@pytest.fixture
def api(agent_server: Server, guest: str) -> Iterator[httpx.Client]:
    with agent_server.client() as client:
        yield client


@pytest.fixture
def remote(agent_server: Server) -> dict[str, str]:
    """The environment that points the CLI at the module's server."""
    return {
        "MEDA_URL": agent_server.url,
        "MEDA_API_TOKEN": agent_server.env.get("MEDA_API_TOKEN", ""),
    }


def run(api: httpx.Client, *argv: str, **fields: Any) -> dict[str, Any]:
    """The short form's result of ``argv`` in the guest (asserting a 200)."""
    answer = api.post(f"/vms/{GUEST}/exec", json={"command": list(argv), **fields})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """A server-sent event stream's events as ``(name, data)``, as they arrive."""
    name = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))


def test_exit_codes_streams_stdin_env_and_cwd(api: httpx.Client) -> None:
    for code in (0, 3, 255):
        assert run(api, "sh", "-c", f"exit {code}")["exit_code"] == code
    apart = run(api, "sh", "-c", "echo out; echo err >&2; echo more")
    assert (apart["stdout"], apart["stderr"]) == ("out\nmore\n", "err\n")
    assert run(api, "cat", stdin="line one\nline two\n")["stdout"] == "line one\nline two\n"
    probe = run(
        api, "sh", "-c", 'printf "%s|%s" "$PROBE" "$(pwd)"', env={"PROBE": "a b=c"}, cwd="/proc"
    )
    assert probe["stdout"] == "a b=c|/proc"
    killed = run(api, "sh", "-c", "kill -9 $$")
    assert (killed["exit_code"], killed["signal"]) == (None, 9)
    assert run(api, "meda-no-such-program")["exit_code"] == 127


def test_a_streamed_command_reads_what_is_posted_to_its_session(api: httpx.Client) -> None:
    request = api.build_request("POST", f"/vms/{GUEST}/exec/stream", json={"command": ["cat"]})
    response = api.send(request, stream=True)
    try:
        assert response.status_code == 200
        stream = events(response)
        name, started = next(stream)
        assert name == "started"
        data = bytes(range(256)) * 40
        fed = api.post(
            f"/vms/{GUEST}/exec/{started['session']}/stdin",
            params={"eof": "true"},
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert fed.status_code == 200, fed.text
        out = b""
        for name, body in stream:
            if name == "stdout":
                out += base64.b64decode(body["data"])
            elif name == "exit":
                assert body["exit_code"] == 0
                break
        assert out == data
    finally:
        response.close()


def test_a_timeout_is_408_with_the_output_so_far(api: httpx.Client) -> None:
    started = time.monotonic()
    answer = api.post(
        f"/vms/{GUEST}/exec",
        json={"command": ["sh", "-c", "echo partial; echo warn >&2; sleep 60"], "timeout": 2},
    )
    assert answer.status_code == 408, answer.text
    body = answer.json()
    assert body["code"] == "TIMEOUT"
    assert (body["details"]["stdout"], body["details"]["stderr"]) == ("partial\n", "warn\n")
    assert time.monotonic() - started < 20
    deadline = time.monotonic() + 10  # killed, not left running in the guest
    while "sleep 60" in run(api, "ps", "-o", "args")["stdout"]:
        assert time.monotonic() < deadline, "the timed-out command still runs"
        time.sleep(0.2)


def test_ten_megabytes_arrive_while_the_command_still_runs(api: httpx.Client) -> None:
    """The command writes 1 MiB, waits until the client has read some of it (the test then
    makes /tmp/go), then writes 9 MiB more: output held back until the end would leave it
    waiting until its timeout killed it."""
    script = (
        "rm -f /tmp/go; dd if=/dev/zero bs=65536 count=16 2>/dev/null;"
        " while [ ! -e /tmp/go ]; do sleep 0.1; done;"
        " dd if=/dev/zero bs=65536 count=144 2>/dev/null"
    )
    body = {"command": ["sh", "-c", script], "stdin": "", "timeout": 60}
    started = time.monotonic()
    response = api.send(
        api.build_request("POST", f"/vms/{GUEST}/exec/stream", json=body), stream=True
    )
    first_at, size = 0.0, 0
    try:
        assert response.status_code == 200
        for name, data in events(response):
            if name == "stdout" and not size:
                first_at = time.monotonic()
                assert run(api, "touch", "/tmp/go")["exit_code"] == 0
            if name == "stdout":
                size += len(base64.b64decode(data["data"]))
            elif name == "exit":
                assert data["exit_code"] == 0
                break
            else:  # an error event (TIMEOUT) says the first bytes came too late
                assert name == "started", (name, data)
    finally:
        response.close()
    ended = time.monotonic() - started
    assert size == 10 * MiB
    print(f"10 MiB through the API: first bytes {first_at - started:.2f}s, all {ended:.2f}s")


def test_a_binary_file_round_trip(api: httpx.Client) -> None:
    data = os.urandom(3 * MiB) + bytes(range(256))
    digest = hashlib.sha256(data).hexdigest()
    put = api.put(
        f"/vms/{GUEST}/files",
        params={"path": "/tmp/blob.bin", "mode": "0640"},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert put.status_code == 201, put.text
    assert put.json() == {"path": "/tmp/blob.bin", "size": len(data), "sha256": digest}
    got = api.get(f"/vms/{GUEST}/files", params={"path": "/tmp/blob.bin"})
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/octet-stream"
    assert hashlib.sha256(got.content).hexdigest() == digest
    in_guest = run(api, "sh", "-c", "sha256sum /tmp/blob.bin; stat -c %a /tmp/blob.bin")
    assert in_guest["stdout"].split() == [digest, "/tmp/blob.bin", "640"]
    assert api.get(f"/vms/{GUEST}/files", params={"path": "/tmp/nothing"}).status_code == 404


def _tree(root: Path) -> dict[str, str]:
    """Each file under ``root`` by its relative path: its sha256."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_meda_cp_copies_a_directory_in_and_out(
    api: httpx.Client, run_meda: RunMeda, remote: dict[str, str], tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "top.txt").write_text("top\n")
    (tree / "sub" / "blob.bin").write_bytes(os.urandom(200_000))
    (tree / "sub" / "deeper" / "empty").write_bytes(b"")
    up = run_meda("cp", str(tree), f"{GUEST}:/tmp/tree", env=remote)
    assert up.returncode == 0, up.stderr
    listing = run(api, "sh", "-c", "cd /tmp/tree && find . -type f | sort")["stdout"]
    assert listing.split() == ["./sub/blob.bin", "./sub/deeper/empty", "./top.txt"]
    down = run_meda("cp", f"{GUEST}:/tmp/tree", str(tmp_path / "back"), env=remote)
    assert down.returncode == 0, down.stderr
    assert _tree(tmp_path / "back") == _tree(tree)


def test_meda_exec_passes_the_exit_status_through_a_server(
    api: httpx.Client, run_meda: RunMeda, remote: dict[str, str]
) -> None:
    script = "echo out; echo err >&2; exit 7"
    result = run_meda("exec", GUEST, "--", "sh", "-c", script, env=remote)
    assert (result.returncode, result.stdout) == (7, "out\n"), result.stderr
    assert "err" in result.stderr


def test_console_follow_sees_a_line_printed_after_the_request_began(api: httpx.Client) -> None:
    mark = f"MEDA-MARK-{secrets.token_hex(4)}"
    request = api.build_request("GET", f"/vms/{GUEST}/console", params={"follow": "true"})
    response = api.send(request, stream=True)
    try:
        assert response.status_code == 200
        run(api, "sh", "-c", f"echo {mark} > /dev/console")
        read_until(response.iter_text(), mark, timeout=30)
    finally:
        response.close()


def test_exec_and_files_work_with_the_guest_network_down(api: httpx.Client) -> None:
    assert run(api, "ip", "link", "set", "eth0", "down")["exit_code"] == 0
    try:
        assert run(api, "cat", "/sys/class/net/eth0/operstate")["stdout"].strip() == "down"
        assert run(api, "ip", "route")["stdout"] == ""  # no way out: no route at all
        put = api.put(
            f"/vms/{GUEST}/files",
            params={"path": "/tmp/offline"},
            content=b"no network needed",
            headers={"Content-Type": "application/octet-stream"},
        )
        assert put.status_code == 201, put.text
        assert run(api, "cat", "/tmp/offline")["stdout"] == "no network needed"
        got = api.get(f"/vms/{GUEST}/files", params={"path": "/tmp/offline"})
        assert got.content == b"no network needed"
    finally:
        run(api, "ip", "link", "set", "eth0", "up")


def test_a_guest_without_an_agent_is_no_agent_quickly(agent_server: Server) -> None:
    cache = Path(os.environ.get("MEDA_TEST_GUEST_CACHE", default_cache()))
    bare = build_test_guest(cache, agent_program=None)
    assert not bare.agent
    Meda(Settings(home=agent_server.home)).images.import_files(
        "bare", kernel=bare.kernel, initrd=bare.initrd, cmdline=bare.cmdline
    )
    with agent_server.client() as api:
        created = api.post("/vms", json={"name": "bare-vm", "image": "bare", "memory": "128M"})
        assert created.status_code == 201, created.text
        vm = api.post("/vms/bare-vm/start").json()["vm"]
        wait_for_text(Path(vm["details"]["console_log"]), BOOT_MARKER, timeout=120)
        started = time.monotonic()
        answer = api.post("/vms/bare-vm/exec", json={"command": ["true"]})
        took = time.monotonic() - started
        assert answer.status_code == 422, answer.text
        assert answer.json()["code"] == "NO_AGENT"
        assert "meda images build" in answer.json()["error"]
        assert "docs/agent.md" in answer.json()["error"]
        assert took < AGENT_TIMEOUT + 4, f"NO_AGENT took {took:.1f}s"
        put = api.put(
            "/vms/bare-vm/files",
            params={"path": "/tmp/x"},
            content=b"x",
            headers={"Content-Type": "application/octet-stream"},
        )
        assert put.status_code == 422 and put.json()["code"] == "NO_AGENT"
        assert api.delete("/vms/bare-vm").status_code == 200


@pytest.fixture(scope="class")
def guest_channel(agent_server: Server, guest: str) -> Iterator[AgentChannel]:
    """The module's guest's agent channel, for this process alone while a class uses it.

    QEMU's chardev takes one host at a time and the server holds its link: the server is
    stopped (its VMs run on) meanwhile, and started again afterwards."""
    agent_server.kill(signal.SIGKILL)
    meda = Meda(Settings(home=agent_server.home))
    vm = meda.vms.get(guest)
    assert vm.runtime is not None
    hypervisor = meda.backends.by_name(Role.HYPERVISOR, vm.hypervisor, HypervisorBackend)
    channel = hypervisor.agent_channel(vm.runtime, vm.vm_dir)
    meda.close()
    assert channel is not None
    try:
        yield channel
    finally:
        agent_link.link_for(channel, 10).close()  # give the channel back to the server
        agent_server.start()


class TestTheAgentInARealGuest(AgentConformance):
    """The conformance suite, from this process, against the agent in the module's guest."""

    @pytest.fixture
    def channel(self, guest_channel: AgentChannel) -> AgentChannel:
        return guest_channel

    @pytest.fixture
    def backend(self, backend_context: BackendContext) -> MedaAgent:
        return MedaAgent(backend_context)

    @pytest.fixture
    def writable_dir(self) -> str:
        return "/tmp"
