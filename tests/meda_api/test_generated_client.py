"""The OpenAPI document is usable as the seed promises: a client generated from it by
openapi-python-client drives a VM's whole lifecycle against a running server."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from meda_core.facade import Meda
from tests.conftest import ServeApi

GENERATOR = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))


@pytest.fixture
def generated(
    tmp_path: Path, fake_meda: Meda, serve_api: ServeApi
) -> Iterator[tuple[ModuleType, str]]:
    """The generated package and the URL of the server it was generated from."""
    if GENERATOR is None:
        pytest.fail("openapi-python-client is missing: pip install .[test]")
    import httpx

    url = serve_api(fake_meda)
    (tmp_path / "openapi.json").write_text(
        json.dumps(httpx.get(f"{url}/api/v1/openapi.json").json())
    )
    subprocess.run(
        [
            GENERATOR,
            "generate",
            "--path",
            "openapi.json",
            "--meta",
            "none",
            "--output-path",
            "medaclient",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("medaclient"), url
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == "medaclient"]:
            del sys.modules[name]


def test_a_generated_client_runs_a_vm_lifecycle(
    generated: tuple[ModuleType, str], fake_image: str
) -> None:
    package, url = generated
    models = importlib.import_module("medaclient.models")
    names = ("create_vm", "start_vm", "get_vm", "stop_vm", "delete_vm", "list_vms")
    ops = {name: importlib.import_module(f"medaclient.api.vms.{name}") for name in names}
    client = package.Client(base_url=url)

    created = ops["create_vm"].sync_detailed(
        client=client, body=models.CreateVMRequest(name="gen", memory="256M")
    )
    assert created.status_code == 201 and created.parsed.vm.name == "gen"
    assert ops["start_vm"].sync(name="gen", client=client).vm.state == "running"
    info = ops["get_vm"].sync(name="gen", client=client)
    assert info.state == "running" and info.details.memory == "256M"
    missing = ops["get_vm"].sync_detailed(name="nope", client=client)
    assert missing.status_code == 404 and missing.parsed.code == "VM_NOT_FOUND"
    assert ops["stop_vm"].sync(name="gen", client=client).vm.state == "stopped"
    assert ops["delete_vm"].sync(name="gen", client=client).success
    assert ops["list_vms"].sync(client=client).count == 0
