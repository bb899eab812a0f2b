"""``POST /images/run`` with QEMU: it answers as fast as create + start, whatever the
image; templates are built in the background (a server operation, or a detached process
of the CLI) and later runs clone them."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from meda_core.facade import Meda
from meda_core.settings import Settings
from meda_core.testing.guest import HTTP_PAGE
from meda_core.testing.host import processes_mentioning
from tests.integration.conftest import RunMeda, Server, StartServer
from tests.integration.test_network import guest_ip, http_get

pytestmark = pytest.mark.vm

#: The seed's ``POST /images/run`` body, unchanged but for registry and org (no internet).
SEED_RUN = {
    "image": "guest",
    "name": "seed-vm",
    "user_data": None,
    "no_start": False,
    "memory": "256M",
    "cpus": 2,
    "disk": "1G",
}
#: A run that waited for a port would take minutes under TCG; an answer takes seconds.
ANSWER_WITHIN = 30


def import_ready(server: Server, name: str, port: int, guest_image: dict[str, object]) -> None:
    """The test guest (its init serves HTTP on port 80) as an image with ``port`` to wait on."""
    meda = Meda(Settings(home=server.home))
    meda.images.import_files(name, ready_port=port, **guest_image)  # type: ignore[arg-type]


def post_run(api: httpx.Client, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    response = api.post("/images/run", json=body, timeout=ANSWER_WITHIN * 4)
    seconds = time.monotonic() - started
    assert response.status_code == 201, response.text
    print(f"run {body['name']}: {seconds:.2f} s, {response.json()['run']}")
    return response.json(), seconds


def answers(netns: str, ip: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while http_get(netns, f"http://{ip}/") != HTTP_PAGE:
        assert time.monotonic() < deadline, f"no answer from {ip}"
        time.sleep(0.5)


def template_ops(api: httpx.Client, timeout: float = 300) -> list[dict[str, Any]]:
    """The server's template builds, once none is pending or running."""
    deadline = time.monotonic() + timeout
    while True:
        ops = [o for o in api.get("/operations").json()["operations"] if o["kind"] == "template"]
        if ops and all(o["state"] not in ("pending", "running") for o in ops):
            return ops
        assert time.monotonic() < deadline, ops
        time.sleep(1)


def built(ops: list[dict[str, Any]]) -> list[str]:
    return [
        o["result"]["template"]
        for o in ops
        if o["state"] == "succeeded" and o["result"]["outcome"] == "built"
    ]


def test_the_seeds_body_answers_within_seconds_for_an_image_without_ssh(
    server: Server, netns: str
) -> None:
    with server.client() as api:
        body, seconds = post_run(api, SEED_RUN)
        assert seconds < ANSWER_WITHIN
        assert body["run"]["path"] == "cold" and body["run"]["template"] is None
        assert "no readiness signal" in body["run"]["reason"]
        vm = body["vm"]
        assert vm["state"] == "running" and vm["details"]["cpus"] == 2
        assert guest_ip(vm) == vm["ip"]  # the guest got its address by DHCP
        answers(netns, vm["ip"])
        assert api.get("/templates").json()["count"] == 0  # nothing built, nothing waited
        assert api.delete("/vms/seed-vm").status_code == 200


def test_first_run_of_a_ready_image_answers_at_start_and_later_runs_clone(
    server: Server, netns: str, guest_image: dict[str, object]
) -> None:
    import_ready(server, "web", 80, guest_image)
    base = {"image": "web", "memory": "256M"}
    with server.client() as api:
        first, seconds = post_run(api, {**base, "name": "r1"})
        assert seconds < ANSWER_WITHIN
        template = first["run"]["template"]
        assert first["run"]["path"] == "cold" and template.startswith("tpl-")
        assert first["vm"]["state"] == "running" and first["vm"]["details"]["clone_of"] is None
        # Another run while the template is being built does not wait for it either.
        during, seconds = post_run(api, {**base, "name": "r2"})
        assert seconds < ANSWER_WITHIN and during["run"]["path"] == "cold"
        assert built(template_ops(api)) == [template]
        for name in ("r1", "r2"):
            answers(netns, api.get(f"/vms/{name}/ip").json()["ip"])  # untouched by the build

        clone, seconds = post_run(api, {**base, "name": "r3"})
        assert clone["run"] == {
            "path": "warm",
            "reason": f"a clone of template {template}",
            "template": template,
            "ready_port": 80,
            "ready_agent": False,
        }
        assert clone["vm"]["details"]["clone_of"] == template
        answers(netns, clone["vm"]["ip"])
        # Other resources: another template, never the first one's; cold: no clone.
        bigger, _ = post_run(api, {**base, "name": "r4", "memory": "320M"})
        assert bigger["run"]["template"] not in (None, template)
        assert bigger["vm"]["details"]["memory"] == "320M"
        assert bigger["run"]["path"] == "cold"
        cold, _ = post_run(api, {**base, "name": "r5", "cold": True})
        assert cold["run"]["path"] == "cold" and cold["run"]["template"] is None
        assert built(template_ops(api)) == [template, bigger["run"]["template"]]
        listed = {t["name"]: t["clones"] for t in api.get("/templates").json()["templates"]}
        assert listed[template] == ["r3"]


def test_an_image_without_a_ready_port_is_ready_once_its_agent_answers(
    server: Server, netns: str
) -> None:
    """The test guest's agent is its readiness signal: its template is snapshotted once the
    agent answers, and a warm run's clone takes its own hostname through that agent."""
    base = {**SEED_RUN, "ready_agent": True}
    with server.client() as api:
        first, seconds = post_run(api, {**base, "name": "a1"})
        assert seconds < ANSWER_WITHIN
        template = first["run"]["template"]
        assert first["run"]["path"] == "cold" and template.startswith("tpl-")
        assert first["run"]["ready_agent"] and first["run"]["ready_port"] is None
        [op] = template_ops(api)
        assert op["result"]["template"] == template, op
        assert "once its agent answers" in op["result"]["reason"]
        clone, seconds = post_run(api, {**base, "name": "a2"})
        assert clone["run"]["path"] == "warm" and clone["run"]["template"] == template
        assert seconds < ANSWER_WITHIN
        ran = api.post("/vms/a2/exec", json={"command": ["hostname"]})
        assert ran.status_code == 200 and ran.json()["stdout"] == "a2\n", ran.text
        for name in ("a1", "a2"):
            assert api.delete(f"/vms/{name}").status_code == 200


def test_a_template_whose_port_never_opens_is_remembered_and_runs_stay_fast(
    start_server: StartServer, netns: str, guest_image: dict[str, object]
) -> None:
    server = start_server(MEDA_RUN_READY_TIMEOUT="5")
    import_ready(server, "closed", 81, guest_image)  # the guest never opens port 81
    with server.client() as api:
        first, seconds = post_run(api, {"image": "closed", "name": "f1", "memory": "256M"})
        assert seconds < ANSWER_WITHIN and first["run"]["path"] == "cold"
        [failed] = template_ops(api)
        assert failed["state"] == "failed" and "port 81" in failed["error"]["error"]
        second, seconds = post_run(api, {"image": "closed", "name": "f2", "memory": "256M"})
        assert seconds < ANSWER_WITHIN and second["run"]["path"] == "cold"
        assert "did not answer on port 81" in second["run"]["reason"]
        assert api.get("/templates").json()["count"] == 0  # the half-built one is gone
        ops = [o for o in api.get("/operations").json()["operations"] if o["kind"] == "template"]
        assert len(ops) == 1  # no new build while the failure is fresh


def test_server_shutdown_calls_off_a_build_and_leaves_no_template(
    start_server: StartServer, netns: str, guest_image: dict[str, object]
) -> None:
    server = start_server(MEDA_RUN_READY_TIMEOUT="20")  # the first run's guest: 20 s
    import_ready(server, "closed", 81, guest_image)
    with server.client() as api:
        first, _ = post_run(api, {"image": "closed", "name": "s1", "memory": "256M"})
        template = first["run"]["template"]
        deadline = time.monotonic() + 120
        while api.get(f"/vms/{template}").status_code != 200:  # the build has begun
            assert time.monotonic() < deadline
            time.sleep(0.5)
        uuid = Meda(Settings(home=server.home, netns=netns)).vms.get(template).uuid
    started = time.monotonic()
    server.kill(signal.SIGTERM)
    print(f"server stopped {time.monotonic() - started:.1f} s after SIGTERM")
    assert time.monotonic() - started < 30
    meda = Meda(Settings(home=server.home, netns=netns))
    assert [vm.name for vm in meda.vms.list()] == ["s1"]  # the caller's VM stays
    assert processes_mentioning(uuid) == []
    assert not list((server.home / "templates").glob("*.failed"))  # no verdict: try again


def test_the_cli_without_a_server_builds_in_a_detached_process(
    server: Server, netns: str, guest_image: dict[str, object], run_meda: RunMeda
) -> None:
    import_ready(server, "web", 80, guest_image)
    env = {key: server.env[key] for key in ("MEDA_HOME", "MEDA_NETNS", "MEDA_DEFAULT_IMAGE")}

    def run(name: str) -> tuple[dict[str, Any], float]:
        started = time.monotonic()
        done = run_meda("run", "web", "--name", name, "--memory", "256M", "--json", env=env)
        seconds = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        print(f"meda run {name}: {seconds:.2f} s")
        return json.loads(done.stdout), seconds

    first, seconds = run("c1")
    template = first["run"]["template"]
    assert seconds < ANSWER_WITHIN and first["run"]["path"] == "cold"
    log = Path(env["MEDA_HOME"]) / "templates" / f"{template}.log"
    deadline = time.monotonic() + 300
    while '"outcome":"built"' not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(1)
    while processes_mentioning(f"build-template\0{template}"):  # the builder exits
        assert time.monotonic() < deadline
        time.sleep(0.2)
    refused = run_meda("images", "build-template", "../../etc/x", env=env)
    assert refused.returncode == 2 and "not the name of a run's template" in refused.stderr
    clone, _ = run("c2")
    assert clone["run"]["path"] == "warm" and clone["vm"]["details"]["clone_of"] == template
    answers(netns, clone["vm"]["ip"])
