"""A web page in a browser on the meda host cannot drive the API: the requests a hostile page
can make (a DNS-rebinding fetch, a cross-site form POST) are refused and change nothing,
while curl, the CLI, the server's own Swagger UI and allowed CORS origins keep working."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from meda_api import create_app
from meda_api.hosts import HostPolicy
from meda_core.facade import Meda
from meda_core.interface.calls import LocalApi
from meda_core.models import PushRequest
from tests.conftest import ServeApi

EVIL = "https://evil.example"
FORM = {"Content-Type": "text/plain"}  # what an HTML form with enctype=text/plain sends


@pytest.fixture
def client(fake_meda: Meda, fake_image: str) -> Iterator[TestClient]:
    with TestClient(create_app(fake_meda), base_url="http://localhost") as client:
        yield client


@pytest.fixture
def victim(client: TestClient, fake_meda: Meda) -> str:
    """A running VM a hostile page would like to stop or delete."""
    assert client.post("/api/v1/vms", json={"name": "victim"}).status_code == 201
    assert client.post("/api/v1/vms/victim/start").status_code == 200
    return "victim"


def state(meda: Meda) -> list[tuple[str, str]]:
    return [(vm.name, vm.state.value) for vm in meda.vms.list()]


def refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "code", "details"}
    assert response.json()["code"] == code


# ---- DNS rebinding: the page's own name in Host, the connection to 127.0.0.1 ----


@pytest.mark.parametrize("host", ["attacker.example:7777", "attacker.example", "localhost.evil"])
def test_a_rebound_name_is_421_and_stops_nothing(
    client: TestClient, fake_meda: Meda, victim: str, host: str
) -> None:
    before = state(fake_meda)
    refused(client.get("/api/v1/vms", headers={"Host": host}), 421, "MISDIRECTED_REQUEST")
    stop = client.post(f"/api/v1/vms/{victim}/stop", headers={"Host": host})
    refused(stop, 421, "MISDIRECTED_REQUEST")
    refused(
        client.delete(f"/api/v1/vms/{victim}", headers={"Host": host}), 421, "MISDIRECTED_REQUEST"
    )
    assert state(fake_meda) == before == [("victim", "running")]


def test_a_rebound_fetch_against_a_running_server(
    fake_meda: Meda, fake_image: str, serve_api: ServeApi
) -> None:
    """Over real HTTP: what the browser sends once attacker.example resolves to 127.0.0.1."""
    url = serve_api(fake_meda)
    created = httpx.post(
        f"{url}/api/v1/vms", json={"name": "rebound"}, headers={"Host": "attacker.example:7777"}
    )
    refused(created, 421, "MISDIRECTED_REQUEST")
    assert fake_meda.vms.list() == []


@pytest.mark.parametrize("host", ["localhost", "localhost:7777", "127.0.0.1:7777", "[::1]:7777"])
def test_loopback_names_pass(client: TestClient, host: str) -> None:
    assert client.get("/api/v1/vms", headers={"Host": host}).status_code == 200


def test_beyond_loopback_the_bind_address_and_configured_names(
    fake_meda: Meda, fake_image: str
) -> None:
    named = TestClient(create_app(fake_meda, hosts=HostPolicy.serving("192.0.2.5", ["vmhost"])))
    for host in ("192.0.2.5:7777", "vmhost:7777", "VMHOST", "localhost:7777"):
        assert named.get("/api/v1/vms", headers={"Host": host}).status_code == 200, host
    for host in ("10.1.2.3:7777", "attacker.example:7777", "vmhost.attacker.example", ""):
        refused(named.get("/api/v1/vms", headers={"Host": host}), 421, "MISDIRECTED_REQUEST")
    # Bound to every address: clients may use any of the host's IPs, never a foreign name.
    every = TestClient(create_app(fake_meda, hosts=HostPolicy.serving("0.0.0.0")))
    assert every.get("/api/v1/vms", headers={"Host": "10.1.2.3:7777"}).status_code == 200
    assert every.get("/api/v1/vms", headers={"Host": "[fd00::5]:7777"}).status_code == 200
    refused(
        every.get("/api/v1/vms", headers={"Host": "attacker.example:7777"}),
        421,
        "MISDIRECTED_REQUEST",
    )


# ---- cross-site requests: a page on another origin posting to localhost ----


@pytest.mark.parametrize("origin", [EVIL, "null", "http://localhost:8080", "http://localhost.evil"])
def test_a_cross_site_form_post_cannot_stop_a_vm(
    client: TestClient, fake_meda: Meda, victim: str, origin: str
) -> None:
    headers = {"Origin": origin, **FORM}
    stop = client.post(f"/api/v1/vms/{victim}/stop", headers=headers, content=b"x=y")
    refused(stop, 403, "FORBIDDEN")
    bodyless = client.post(f"/api/v1/vms/{victim}/stop", headers={"Origin": origin})
    refused(bodyless, 403, "FORBIDDEN")
    made = client.post("/api/v1/vms", headers=headers, content=b'{"name": "planted"}')
    refused(made, 403, "FORBIDDEN")
    refused(client.get("/api/v1/vms", headers={"Origin": origin}), 403, "FORBIDDEN")
    assert state(fake_meda) == [("victim", "running")]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_form_bodies_without_an_origin_are_415(
    client: TestClient, fake_meda: Meda, victim: str, content_type: str
) -> None:
    """Browsers that send no Origin on a form POST still cannot send JSON without CORS."""
    headers = {"Content-Type": content_type}
    stop = client.post(f"/api/v1/vms/{victim}/stop", headers=headers, content=b"a=b")
    refused(stop, 415, "UNSUPPORTED_MEDIA_TYPE")
    empty_form = client.post(f"/api/v1/vms/{victim}/stop", headers=headers)
    refused(empty_form, 415, "UNSUPPORTED_MEDIA_TYPE")
    made = client.post("/api/v1/vms", headers=headers, content=b'{"name": "planted"}')
    refused(made, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert state(fake_meda) == [("victim", "running")]


def test_a_body_without_a_content_type_is_415(client: TestClient, fake_meda: Meda) -> None:
    made = client.post("/api/v1/vms", content=b'{"name": "untyped"}')
    refused(made, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert fake_meda.vms.list() == []


def test_same_origin_pages_and_plain_clients_pass(client: TestClient, victim: str) -> None:
    """Swagger UI calls the API from the server's own origin; curl and the CLI send none."""
    assert "swagger-ui" in client.get("/swagger-ui").text
    own = {"Origin": "http://localhost"}
    assert client.get("/api/v1/openapi.json", headers=own).status_code == 200
    made = client.post("/api/v1/vms", json={"name": "from-swagger"}, headers=own)
    assert made.status_code == 201, made.text
    typed = {"Content-Type": "application/json; charset=utf-8"}
    assert client.post(f"/api/v1/vms/{victim}/stop", headers=typed).status_code == 200
    assert client.post(f"/api/v1/vms/{victim}/start").status_code == 200  # no body, no type


def test_cors_preflights_need_no_token_but_requests_do(fake_meda: Meda, fake_image: str) -> None:
    ops = "https://ops.example"
    app = create_app(fake_meda, token="t" * 32, cors_origins=[ops])
    client = TestClient(app, base_url="http://localhost")
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    answered = client.options("/api/v1/vms", headers={"Origin": ops, **preflight})
    assert answered.status_code == 200, answered.text
    assert answered.headers["access-control-allow-origin"] == ops
    refused(client.options("/api/v1/vms", headers={"Origin": EVIL, **preflight}), 403, "FORBIDDEN")
    without = client.post("/api/v1/vms", json={"name": "cors"}, headers={"Origin": ops})
    refused(without, 401, "UNAUTHORIZED")
    assert without.headers["access-control-allow-origin"] == ops  # the page can read why
    auth = {"Origin": ops, "Authorization": f"Bearer {'t' * 32}"}
    assert client.post("/api/v1/vms", json={"name": "cors"}, headers=auth).status_code == 201
    refused(
        client.post("/api/v1/vms", json={"name": "x"}, headers={**auth, "Origin": EVIL}),
        403,
        "FORBIDDEN",
    )


def test_the_document_lists_the_new_answers(client: TestClient) -> None:
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    for operations in paths.values():
        for operation in operations.values():
            assert {"403", "415", "421"} <= set(operation["responses"])


# ---- the seed's curl examples, exactly as written, on loopback ----

SEED_CURLS = """
curl -X POST http://localhost:7777/api/v1/vms \
  -H "Content-Type: application/json" \
  -d '{
    "name": "api-test",
    "memory": "2G",
    "cpus": 4,
    "disk": "20G"
  }'
curl -X POST http://localhost:7777/api/v1/vms/api-test/start
curl http://localhost:7777/api/v1/vms/api-test/ip
curl -X POST http://localhost:7777/api/v1/vms/api-test/port-forward \
  -H "Content-Type: application/json" \
  -d '{"host_port": 8080, "guest_port": 80}'
curl -X POST http://localhost:7777/api/v1/images/pull \
  -H "Content-Type: application/json" \
  -d '{"image": "ubuntu:latest"}'
curl -X POST http://localhost:7777/api/v1/images/run \
  -H "Content-Type: application/json" \
  -d '{
    "image": "ubuntu:latest",
    "name": "ubuntu-vm",
    "memory": "1G",
    "cpus": 2
  }'
curl -X POST http://localhost:7777/api/v1/images \
  -H "Content-Type: application/json" \
  -d '{
    "name": "my-ubuntu",
    "tag": "v1.0",
    "from_vm": "ubuntu-vm"
  }'
curl http://localhost:7777/api/v1/openapi.json
curl http://localhost:7777/swagger-ui
"""


def test_the_seed_curl_examples_work_on_loopback(
    fake_meda: Meda, fake_image: str, serve_api: ServeApi
) -> None:
    LocalApi(fake_meda).push_image(PushRequest(name="default", image="ubuntu:latest"))
    port = serve_api(fake_meda).rsplit(":", 1)[1]
    script = SEED_CURLS.replace("localhost:7777", f"localhost:{port}")
    statuses = []
    for line in script.strip().replace("\\\n", " ").split("\ncurl"):
        argv = shlex.split(line if line.startswith("curl") else "curl" + line)
        argv[1:1] = ["-sS", "--max-time", "60", "--write-out", "\n%{http_code}"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
        assert done.returncode == 0, f"{shlex.join(argv)}: {done.stderr}"
        statuses.append(int(done.stdout.rsplit("\n", 1)[1]))
    # The one 409 is meda's own rule (an image is made from a stopped VM's disk), not a guard.
    assert statuses == [201, 200, 200, 201, 200, 201, 409, 200, 200]
    assert {vm.name for vm in fake_meda.vms.list()} == {"api-test", "ubuntu-vm"}


def test_no_page_may_frame_the_api(client: TestClient) -> None:
    """Swagger UI in a hidden frame under a decoy button would run what the page wants."""
    for path in ("/swagger-ui", "/redoc", "/api/v1/health"):
        answer = client.get(path)
        assert answer.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"].split("; ")
