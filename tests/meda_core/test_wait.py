"""Waiting for a VM: ``for`` values parsed into conditions, and the wait on a fake meda."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from meda_core.errors import InvalidRequest, NoAgent, VMNotFound, WaitTimedOut
from meda_core.facade import Meda
from meda_core.interface import wait
from meda_core.interface.wait import Condition, Kind, parse_condition, parse_conditions, wait_for
from meda_core.models import VM, VMState
from meda_core.state.eventbus import EventBus


@pytest.mark.parametrize(
    ("text", "condition"),
    [
        ("running", Condition(Kind.RUNNING)),
        ("stopped", Condition(Kind.STOPPED)),
        ("ip", Condition(Kind.IP)),
        ("agent", Condition(Kind.AGENT)),
        ("port:22", Condition(Kind.PORT, 22)),
        ("port:1", Condition(Kind.PORT, 1)),
        ("port:65535", Condition(Kind.PORT, 65535)),
        ("port:080", Condition(Kind.PORT, 80)),
    ],
)
def test_each_form_parses(text: str, condition: Condition) -> None:
    assert parse_condition(text) == condition
    assert str(condition) == text.replace("080", "80")


@pytest.mark.parametrize(
    "text",
    ["", "port", "port:", "port:0", "port:65536", "port:100000", "port:-1", "port:+22",
     "port:22 ", " port:22", "port:2 2", "port:0x16", "port:²", "PORT:22", "Running",
     "running ", "ip,port:22", "state", "x" * 10_000, "running\x00"],
)  # fmt: skip
def test_anything_else_is_invalid(text: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_condition(text)
    assert len(refused.value.message) < 200  # a long value is not echoed whole


def test_conditions_repeat_once_in_order() -> None:
    conditions = parse_conditions(["ip", "port:22", "ip", "running", "port:22"])
    assert [str(c) for c in conditions] == ["ip", "port:22", "running"]


@pytest.mark.parametrize(
    "values",
    [[], ["stopped", "running"], ["stopped", "ip"], ["port:22", "stopped"], ["agent", "stopped"]],
)
def test_no_conditions_or_ones_that_never_hold_together_are_invalid(values: list[str]) -> None:
    with pytest.raises(InvalidRequest):
        parse_conditions(values)


def test_at_most_so_many_conditions() -> None:
    assert len(parse_conditions(["stopped"] * 16)) == 1
    with pytest.raises(InvalidRequest, match="at most 16"):
        parse_conditions(["stopped"] * 17)


def test_what_the_store_must_say(make_vm: Callable[..., VM]) -> None:
    vm = make_vm("vm1")
    assert Condition(Kind.STOPPED).unrecorded(vm) is None
    assert Condition(Kind.RUNNING).unrecorded(vm) == "it is stopped"
    assert vm.ip is not None and Condition(Kind.IP).unrecorded(vm) == "it is stopped"
    vm.state = VMState.RUNNING
    assert Condition(Kind.IP).unrecorded(vm) is None
    assert Condition(Kind.PORT, 22).unrecorded(vm) is None
    vm.ip = None
    assert Condition(Kind.IP).unrecorded(vm) == "it has no address"


def test_the_bus_calls_back_until_told_to_stop() -> None:
    bus, seen = EventBus(), list[dict[str, Any]]()

    def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("a broken callback harms neither the bus nor the others")

    stop = bus.on_publish(seen.append)
    bus.on_publish(broken)
    bus.publish("vm", {"vm": "a"})
    stop()
    bus.publish("vm", {"vm": "b"})
    assert seen == [{"event": "vm", "data": {"vm": "a"}}]


def _wait(meda: Meda, name: str, values: list[str], timeout: float) -> VM:
    return asyncio.run(wait_for(meda, name, parse_conditions(values), timeout))


def test_an_event_wakes_the_wait_at_once(
    fake_meda: Meda, make_vm: Callable[..., VM], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With polling out of the picture (a minute between looks), the start's event is
    what ends the wait."""
    monkeypatch.setattr(wait, "RECHECK", 60.0)
    make_vm("vm1")
    starter = threading.Timer(0.5, lambda: fake_meda.vms.start("vm1"))
    starter.start()
    started = time.monotonic()
    vm = _wait(fake_meda, "vm1", ["running"], 30)
    starter.join()
    assert vm.state == VMState.RUNNING and time.monotonic() - started < 5
    assert not fake_meda.events._callbacks  # it listens no more


def test_another_vm_of_the_same_name_is_not_the_one_waited_for(
    fake_meda: Meda, make_vm: Callable[..., VM], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_vm("vm1")
    get = fake_meda.vms.get
    reads = [0]

    def replaced(name: str) -> VM:  # deleted and made again between two looks
        reads[0] += 1
        vm = get(name)
        return vm.model_copy(update={"uuid": "another"}) if reads[0] > 1 else vm

    monkeypatch.setattr(fake_meda.vms, "get", replaced)
    with pytest.raises(VMNotFound, match="deleted while"):
        _wait(fake_meda, "vm1", ["running"], 30)


def test_a_vm_being_deleted_is_waited_for_until_it_is_gone(
    fake_meda: Meda, make_vm: Callable[..., VM], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One answer for a VM deleted meanwhile, 404, whenever the wait looks: a delete under
    way may still fail (and leave the VM)."""
    vm = make_vm("vm1").model_copy(update={"state": VMState.DELETING})
    reads = [0]

    def deleting(name: str) -> VM:
        reads[0] += 1
        if reads[0] > 3:
            raise VMNotFound(name)
        return vm

    monkeypatch.setattr(fake_meda.vms, "get", deleting)
    with pytest.raises(VMNotFound, match="deleted while"):
        _wait(fake_meda, "vm1", ["running"], 30)


def test_agent_without_an_agent_backend_is_no_agent_at_once(
    fake_meda: Meda, make_vm: Callable[..., VM], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_vm("vm1")  # stopped: no guest to ask, and still nothing can ever answer
    monkeypatch.setattr(fake_meda.backends, "agent", lambda: None)
    with pytest.raises(NoAgent):
        _wait(fake_meda, "vm1", ["agent"], 30)


def test_the_timeout_says_what_is_pending(fake_meda: Meda, make_vm: Callable[..., VM]) -> None:
    make_vm("vm1")
    with pytest.raises(WaitTimedOut) as timed_out:
        _wait(fake_meda, "vm1", ["running", "ip"], 0.3)
    error = timed_out.value
    assert error.http_status == 408 and error.exit_code == 124 and error.code == "TIMEOUT"
    assert error.details["pending"] == ["running", "ip"] and error.details["state"] == "stopped"


@pytest.mark.parametrize("timeout", [-1, 3600.5, float("nan"), float("inf")])
def test_a_timeout_out_of_bounds_is_invalid(
    fake_meda: Meda, make_vm: Callable[..., VM], timeout: float
) -> None:
    make_vm("vm1")
    with pytest.raises(InvalidRequest):
        _wait(fake_meda, "vm1", ["running"], timeout)


def test_a_wait_in_this_process_works_without_a_server(
    fake_meda: Meda, make_vm: Callable[..., VM]
) -> None:
    """The CLI on the VM host: nobody watches the VMs, the store is read again and again."""
    from meda_core.interface.calls import LocalApi

    make_vm("vm1")
    assert not fake_meda.watched
    started = threading.Timer(0.3, lambda: fake_meda.vms.start("vm1"))
    started.start()
    info: Any = LocalApi(fake_meda).wait_vm("vm1", ["running"], 30)
    started.join()
    assert info.state == VMState.RUNNING
