"""The MCP tool table (meda_core.interface.mcp) without the SDK: arguments as the table
declares them, refusals before anything is done, files and console in their MCP shapes."""

from __future__ import annotations

import base64
import subprocess
import sys
from typing import Any

import pytest

from meda_core.errors import InvalidRequest, PayloadTooLarge, VMNotFound
from meda_core.facade import Meda
from meda_core.interface import mcp
from meda_core.interface.calls import LocalApi
from meda_core.interface.table import TABLE

TOOLS = {tool.name: tool for tool in mcp.TOOLS}
#: The table operation behind each tool that is one.
OPERATIONS = {
    "list_vms": "list_vms",
    "get_vm": "get_vm",
    "run": "run_image",
    "create_vm": "create_vm",
    "start_vm": "start_vm",
    "stop_vm": "stop_vm",
    "delete_vm": "delete_vm",
    "exec": "exec_command",
}


def _run(fake_meda: Meda, tool: str, **arguments: Any) -> Any:
    return TOOLS[tool].run(LocalApi(fake_meda), arguments)


@pytest.mark.parametrize(("tool", "operation"), OPERATIONS.items())
def test_a_tools_arguments_are_its_operations(tool: str, operation: str) -> None:
    """The parameters beside the body's fields, the response model as the result."""
    endpoint = next(e for e in TABLE if e.name == operation)
    expected = {p.name for p in endpoint.params if p.where != "body"}
    if endpoint.body is not None:
        expected |= set(endpoint.body.type.model_fields)
    assert set(TOOLS[tool].arguments.model_fields) == expected
    assert TOOLS[tool].result is endpoint.response


def test_the_table_imports_no_sdk() -> None:
    code = "import sys, meda_core.interface.mcp; print('mcp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("tool", "arguments", "field"),
    [
        ("create_vm", {"name": "UPPER"}, "name"),
        ("create_vm", {"name": "vm1", "cpus": 0}, "cpus"),
        ("stop_vm", {"name": "vm1", "timeout": -1}, "timeout"),
        ("exec", {"name": "vm1", "command": ["a\0b"]}, "command"),
        ("put_file", {"name": "vm1", "path": "/f", "content": "x", "mode": "999"}, "mode"),
        ("get_file", {"name": "vm1", "path": "/f", "encoding": "hex"}, "encoding"),
    ],
)
def test_bad_arguments_are_refused_field_by_field(
    fake_meda: Meda, fake_image: str, tool: str, arguments: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        _run(fake_meda, tool, **arguments)
    assert field in {problem["field"].split(".")[0] for problem in refused.value.details["errors"]}
    assert fake_meda.vms.list() == []


def test_an_unknown_argument_or_a_bad_label_is_refused(fake_meda: Meda, fake_image: str) -> None:
    with pytest.raises(InvalidRequest, match=r"unknown argument\(s\) for create_vm: cpu$"):
        _run(fake_meda, "create_vm", name="vm1", cpu=2)
    with pytest.raises(InvalidRequest, match="label"):
        _run(fake_meda, "create_vm", name="vm1", labels={"Bad Key": "v"})
    assert fake_meda.vms.list() == []


def test_a_body_field_left_out_keeps_the_requests_default(fake_meda: Meda, fake_image: str) -> None:
    created = _run(fake_meda, "create_vm", name="vm1", cpus=2)
    assert created.vm.details.cpus == 2
    assert created.vm.details.memory == "1G"


def test_files_go_in_and_out_as_text_or_base64(fake_meda: Meda, running_vm: str) -> None:
    binary = bytes(range(256))
    encoded = base64.b64encode(binary).decode()
    put = _run(
        fake_meda, "put_file", name=running_vm, path="/b", content=encoded, encoding="base64"
    )
    assert put.size == 256
    got = _run(fake_meda, "get_file", name=running_vm, path="/b", encoding="base64")
    assert (got.size, got.content) == (256, encoded)
    with pytest.raises(InvalidRequest, match="not UTF-8 text"):
        _run(fake_meda, "get_file", name=running_vm, path="/b")
    with pytest.raises(InvalidRequest, match="not valid Unicode"):
        _run(fake_meda, "put_file", name=running_vm, path="/c", content="\ud800")
    with pytest.raises(InvalidRequest, match="not valid base64"):
        _run(fake_meda, "put_file", name=running_vm, path="/c", content="!!", encoding="base64")


def test_a_file_over_the_inline_cap_is_413(
    fake_meda: Meda, running_vm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mcp, "MAX_FILE_BYTES", 10)
    _run(fake_meda, "put_file", name=running_vm, path="/big", content="x" * 11)
    with pytest.raises(PayloadTooLarge, match="meda cp"):
        _run(fake_meda, "get_file", name=running_vm, path="/big")
    assert _run(fake_meda, "put_file", name=running_vm, path="/ok", content="y" * 10).size == 10
    assert _run(fake_meda, "get_file", name=running_vm, path="/ok").content == "y" * 10


def test_the_console_tail(fake_meda: Meda, running_vm: str) -> None:
    console = _run(fake_meda, "console", name=running_vm, tail=1)
    assert console.name == running_vm
    assert console.text.count("\n") <= 1
    with pytest.raises(VMNotFound):
        _run(fake_meda, "console", name="absent")


def test_run_answers_with_the_run_result(fake_meda: Meda, fake_image: str) -> None:
    ran = _run(fake_meda, "run", image=fake_image, name="r1", cold=True)
    assert ran.success and ran.vm is not None
    assert ran.vm.name == "r1" and ran.run.path == "cold"
