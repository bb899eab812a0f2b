"""Networking end to end, in a namespace the test makes: DHCP, reachability, forwards."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from meda_core.facade import Meda
from meda_core.settings import Settings
from meda_core.testing import cpio
from meda_core.testing.guest import DHCP_EVENT, HTTP_PAGE, IP_MARKER, BootableGuest, guest_output
from meda_core.testing.guest import guest_ip as reported_ip
from meda_core.testing.host import free_port
from meda_core.testing.namespaces import (
    OUTSIDE_NAME,
    OUTSIDE_PAGE,
    another_host,
    connects,
    destroy,
    listener,
    outside_world,
    run_in,
)
from meda_core.testing.pytest_plugin import wait_for_text
from tests.integration.conftest import Server, StartServer

pytestmark = pytest.mark.vm
NS_HOST = "10.200.0.1"
CLIENT = "10.200.0.2"


def start_vm(api: httpx.Client, name: str, memory: str = "256M") -> dict:  # type: ignore[type-arg]
    assert api.post("/vms", json={"name": name, "memory": memory}).status_code == 201
    response = api.post(f"/vms/{name}/start")
    assert response.status_code == 200, response.text
    return response.json()["vm"]  # type: ignore[no-any-return]


def guest_ip(vm: dict, timeout: float = 120) -> str:  # type: ignore[type-arg]
    """The address the guest itself got by DHCP, read from its serial console."""
    console = Path(vm["details"]["console_log"])
    wait_for_text(console, IP_MARKER, timeout)
    deadline = time.monotonic() + 10  # the rest of the line may still be on its way
    while (ip := reported_ip(console.read_text(errors="replace"))) is None:
        assert time.monotonic() < deadline, console.read_text(errors="replace")[-2000:]
        time.sleep(0.1)
    return ip


def http_get(netns: str, url: str) -> str:
    return run_in(netns, "curl", "-s", "-m", "10", url, check=False).strip()


@pytest.fixture
def client_host(netns: str) -> Iterator[str]:
    """Another host: a namespace joined to meda's by a veth pair (10.200.0.0/24)."""
    client = another_host(netns, NS_HOST, CLIENT)
    yield client
    destroy(client)  # deleting it deletes vc0 and with it vh0


def test_dhcp_reachability_and_port_forwards(server: Server, netns: str, client_host: str) -> None:
    with server.client() as api:
        vm = start_vm(api, "web")
        leased = api.get("/vms/web/ip").json()
        assert leased["vm"] == "web"
        assert guest_ip(vm) == leased["ip"]  # the guest got the leased address by DHCP
        ip = leased["ip"]
        assert "1 packets received" in run_in(netns, "busybox", "ping", "-c", "1", "-W", "5", ip)
        assert http_get(netns, f"http://{ip}/") == HTTP_PAGE

        port = free_port()
        response = api.post("/vms/web/port-forward", json={"host_port": port, "guest_port": 80})
        assert response.status_code == 201, response.text
        forward = response.json()["forward"]
        assert (forward["address"], forward["netns"]) == (f"127.0.0.1:{port}", None)
        assert f"connect to 127.0.0.1:{port}" in response.json()["message"]
        assert api.get("/vms/web/port-forward").json()["forwards"] == [forward]
        # In the namespace meda runs in (the host's), through its proxy ...
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text.strip() == HTTP_PAGE
        # ... and in MEDA_NETNS by its DNAT, on loopback, the host's address and from afar.
        assert http_get(netns, f"http://127.0.0.1:{port}/") == HTTP_PAGE
        assert http_get(netns, f"http://{NS_HOST}:{port}/") == HTTP_PAGE
        assert http_get(client_host, f"http://{NS_HOST}:{port}/") == HTTP_PAGE
        assert api.get("/vms/web").json()["details"]["port_forwards"] == [
            {"host_port": port, "guest_port": 80, "protocol": "tcp"}
        ]
        again = api.post("/vms/web/port-forward", json={"host_port": port, "guest_port": 80})
        assert again.status_code == 409
        with socket.socket() as busy:  # a port taken here, though free in MEDA_NETNS
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            refused = api.post("/vms/web/port-forward", json={"host_port": taken, "guest_port": 80})
            assert refused.status_code == 409 and "in use" in refused.json()["error"]
        assert api.get("/vms/web/port-forward").json()["count"] == 1

        assert api.delete(f"/vms/web/port-forward/{port}").status_code == 200
        assert http_get(netns, f"http://127.0.0.1:{port}/") == ""
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert api.delete("/vms/web").status_code == 200
        # The netns fixture then checks links, rules and processes are as before.


def test_forwards_come_back_when_the_server_restarts(server: Server, netns: str) -> None:
    port = free_port()
    with server.client() as api:
        vm = start_vm(api, "keep")
        guest_ip(vm)
        api.post("/vms/keep/port-forward", json={"host_port": port, "guest_port": 80})
    server.kill(signal.SIGKILL)
    # As after a host reboot: no rules, no proxy.
    run_in(netns, "nft", "delete", "table", "ip", "meda")
    pidfile = json.loads((server.home / "net" / "proxies" / f"tcp-{port}.json").read_text())
    os.kill(pidfile["runtime"]["pid"], signal.SIGKILL)
    assert http_get(netns, f"http://127.0.0.1:{port}/") == ""
    server.start()
    assert http_get(netns, f"http://127.0.0.1:{port}/") == HTTP_PAGE
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text.strip() == HTTP_PAGE


def test_ten_vms_started_at_once_get_ten_addresses(server: Server) -> None:
    names = [f"par-{i}" for i in range(10)]
    with server.client() as api, ThreadPoolExecutor(max_workers=10) as pool:
        for name in names:
            assert api.post("/vms", json={"name": name, "memory": "128M"}).status_code == 201
        started = list(pool.map(lambda n: api.post(f"/vms/{n}/start"), names))
        assert [r.status_code for r in started] == [200] * 10
        leased = [api.get(f"/vms/{n}/ip").json()["ip"] for n in names]
        assert len(set(leased)) == 10
        got = list(pool.map(lambda r: guest_ip(r.json()["vm"], timeout=240), started))
        assert got == leased
        deleted = list(pool.map(lambda n: api.delete(f"/vms/{n}"), names))
        assert [r.status_code for r in deleted] == [200] * 10
        assert api.get("/vms").json()["count"] == 0


def test_user_mode_network_boots_and_forwards(start_server: StartServer, netns: str) -> None:
    server = start_server(MEDA_NETWORK="user")
    run_in(netns, "ip", "link", "set", "lo", "up")  # a new namespace starts with lo down
    with server.client() as api:
        assert api.post("/vms", json={"name": "slirp", "memory": "256M"}).status_code == 201
        # One forward given before start (a hostfwd on QEMU's command line) ...
        api.post("/vms/slirp/port-forward", json={"host_port": 8090, "guest_port": 80})
        vm = api.post("/vms/slirp/start").json()["vm"]
        assert vm["details"]["network"] == "user"
        assert guest_ip(vm) == "10.0.2.15" == api.get("/vms/slirp/ip").json()["ip"]
        assert http_get(netns, "http://127.0.0.1:8090/") == HTTP_PAGE
        # ... and one added while it runs (through QEMU's monitor).
        assert (
            api.post("/vms/slirp/port-forward", json={"host_port": 8091, "guest_port": 80})
        ).status_code == 201
        assert http_get(netns, "http://127.0.0.1:8091/") == HTTP_PAGE
        assert api.delete("/vms/slirp/port-forward/8091").status_code == 200
        assert http_get(netns, "http://127.0.0.1:8091/") == ""
        assert api.delete("/vms/slirp").status_code == 200
    assert "meda0" not in run_in(netns, "ip", "link")


SECRET = "MEDA-HOST-LOOPBACK-SECRET"
PROBE = "MEDA-PROBE:"
SERVE_SECRET = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(sys.argv[1].encode())\n"
    "s = http.server.HTTPServer(('127.0.0.1', 0), H)\n"
    "print(s.server_address[1], flush=True); s.serve_forever()\n"
)


@pytest.fixture
def loopback_secret(netns: str) -> Iterator[int]:
    """An HTTP service on 127.0.0.1 in meda's namespace, as the API is; yields its port."""
    run_in(netns, "ip", "link", "set", "lo", "up")
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", SERVE_SECRET, SECRET],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    yield int(server.stdout.readline())
    server.kill()
    server.wait()


def probing_guest(test_guest: BootableGuest, dest: Path, host: str, port: int) -> Path:
    """The test guest's initramfs, whose guest (root) asks ``host:port`` for a page once it
    has an address and prints the answer; a second archive appended replaces the DHCP
    script. (busybox's ``nc``: its static ``wget`` crashes in name lookup.)"""
    request = 'printf "GET / HTTP/1.0\\r\\n\\r\\n"'
    script = DHCP_EVENT + (
        '[ "$1" = bound ] || exit 0\n'
        f"got=$({request} | nc -w 5 {host} {port} 2>&1 | tail -c 100)\n"
        f'echo "{PROBE}$got" > /dev/console\n'
    )
    extra = cpio.archive([cpio.file("bin/dhcp-event", script.encode(), executable=True)])
    dest.write_bytes(test_guest.initrd.read_bytes() + gzip.compress(extra))
    return dest


def test_a_user_mode_guest_cannot_reach_the_hosts_loopback(
    start_server: StartServer,
    netns: str,
    test_guest: BootableGuest,
    loopback_secret: int,
    tmp_path: Path,
) -> None:
    server = start_server(MEDA_NETWORK="user")
    initrd = probing_guest(test_guest, tmp_path / "probe.img", "10.0.2.2", loopback_secret)
    Meda(Settings(home=server.home)).images.import_files(
        "probe", kernel=test_guest.kernel, initrd=initrd, cmdline=test_guest.cmdline
    )
    with server.client() as api:
        created = api.post("/vms", json={"name": "probe", "image": "probe", "memory": "256M"})
        assert created.status_code == 201, created.text
        api.post("/vms/probe/port-forward", json={"host_port": 8092, "guest_port": 80})
        vm = api.post("/vms/probe/start").json()["vm"]
        console = Path(vm["details"]["console_log"])
        wait_for_text(console, PROBE, 120)
        time.sleep(0.5)  # the rest of the line
        assert SECRET not in console.read_text(errors="replace")
        assert http_get(netns, "http://127.0.0.1:8092/") == HTTP_PAGE  # forwards still work
        assert api.delete("/vms/probe").status_code == 200


# ---- a way out: names and addresses beyond the host ----
# meda runs inside the test's namespace as on a host of its own (the host's namespace is
# never touched); the outside world is another namespace behind it, at WORLD.

WORLD_HOST, WORLD = "10.201.0.1", "10.201.0.2"
RESOLVED, FETCHED = "MEDA-RESOLVED=", "MEDA-FETCHED="


def world_guest(test_guest: BootableGuest, dest: Path) -> Path:
    """The test guest, which once it has an address takes DHCP's name server, looks up
    :data:`OUTSIDE_NAME` and asks the address it gets for a page, printing both."""
    lookup = f"nslookup {OUTSIDE_NAME} 2>/dev/null | awk '/^Address/ {{a = $NF}} END {{print a}}'"
    request = f'printf "GET / HTTP/1.0\\r\\nHost: {OUTSIDE_NAME}\\r\\n\\r\\n"'
    script = DHCP_EVENT + (
        '[ "$1" = bound ] || exit 0\n'
        'mkdir -p /etc && for s in $dns; do echo "nameserver $s"; done > /etc/resolv.conf\n'
        f"ip=$({lookup})\n"
        f'echo "{RESOLVED}$ip" > /dev/console\n'
        f'got=$({request} | nc -w 5 "$ip" 80 2>&1 | tail -c 100)\n'
        f'echo "{FETCHED}$got" > /dev/console\n'
    )
    extra = cpio.archive([cpio.file("bin/dhcp-event", script.encode(), executable=True)])
    dest.write_bytes(test_guest.initrd.read_bytes() + gzip.compress(extra))
    return dest


def _healthy(api: httpx.Client) -> bool:
    try:
        return api.get("/health").status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def meda_inside(ns: str, home: Path, **env: str) -> Iterator[httpx.Client]:
    """``meda serve`` in namespace ``ns`` (its network there), reached on its Unix socket."""
    socket = home / "api.sock"
    run_in(ns, "ip", "link", "set", "lo", "up")  # the API's TCP side is on 127.0.0.1
    nsenter = ["nsenter", f"--net=/run/netns/{ns}", sys.executable]
    full_env = {**os.environ, "MEDA_HOME": str(home), **env}
    with (home / "server.log").open("ab") as log:
        server = subprocess.Popen(
            [*nsenter, "-m", "meda_cli.main", "serve", "--unix-socket", str(socket)],
            env=full_env,
            stdout=log,
            stderr=log,
        )
    transport = httpx.HTTPTransport(uds=str(socket))
    api = httpx.Client(transport=transport, base_url="http://localhost/api/v1", timeout=120)
    try:
        deadline = time.monotonic() + 30
        while not _healthy(api):
            assert time.monotonic() < deadline, (home / "server.log").read_text()
            time.sleep(0.2)
        yield api
    finally:
        api.close()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        # Whatever the test left, meda removes (there, in its namespace).
        cleanup = "from meda_core.facade import Meda; Meda().vms.delete_all()"
        subprocess.run(
            [*nsenter, "-c", cleanup],
            env={**full_env, "MEDA_STOP_TIMEOUT": "3"},
            check=True,
            timeout=120,
        )


@pytest.mark.parametrize("mode", ["default", "netns-uplink", "own-namespace"])
def test_a_guest_resolves_names_and_reaches_the_outside(
    netns: str, test_guest: BootableGuest, tmp_path: Path, mode: str
) -> None:
    home = tmp_path / "home"
    initrd = world_guest(test_guest, tmp_path / "world.img")
    Meda(Settings(home=home)).images.import_files(
        "world", kernel=test_guest.kernel, initrd=initrd, cmdline=test_guest.cmdline
    )
    env = {"MEDA_DEFAULT_IMAGE": "world", "MEDA_DNS_SERVERS": WORLD}
    inner = f"meda-n-{secrets.token_hex(3)}"  # meda's namespace, made and deleted by meda
    if mode == "netns-uplink":
        env |= {"MEDA_NETNS": inner, "MEDA_NETNS_CREATE": "1", "MEDA_NETNS_UPLINK": "1"}
    with outside_world(netns, WORLD_HOST, WORLD), meda_inside(netns, home, **env) as api:
        if mode == "netns-uplink":  # the uplink leads out by the host's default route only
            run_in(netns, "ip", "route", "add", "default", "via", WORLD)
        started = time.monotonic()
        # own-namespace: a template's network, as clones have (DHCP and DNS at 10.213.0.1).
        template = mode == "own-namespace"
        created = api.post("/vms", json={"name": "out", "memory": "256M", "template": template})
        assert created.status_code == 201, created.text
        vm = api.post("/vms/out/start").json()["vm"]
        console = Path(vm["details"]["console_log"])
        wait_for_text(console, FETCHED, 120)
        time.sleep(0.5)  # the rest of the line
        print(f"{mode}: resolved and fetched {time.monotonic() - started:.1f}s after start")
        said = guest_output(console.read_text(errors="replace"))
        assert f"{RESOLVED}{WORLD}\n" in said, said[-2000:]
        assert OUTSIDE_PAGE in said.split(FETCHED, 1)[1], said[-2000:]
        if mode == "netns-uplink":
            # The uplink leads out of meda's namespace, never into its own services.
            assert connects(inner, WORLD, 80)
            with listener(netns, "0.0.0.0") as port:
                assert connects(netns, WORLD_HOST, port)
                for address in ("10.213.255.1", WORLD_HOST, "127.0.0.1"):
                    assert not connects(inner, address, port, timeout=1), address
        assert api.delete("/vms/out").status_code == 200
    # meda's namespace went with its last VM; the netns fixture checks that the uplink,
    # its rules and every process left the test's namespace as well.
    assert not Path("/run/netns", inner).exists()
