"""``meda create|list|get|start|stop|delete``: VM lifecycle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from meda_cli.context import api, handles_errors
from meda_cli.idempotency import IdempotencyKeyOption, keyed_api
from meda_cli.output import (
    JsonOption,
    UserDataOption,
    fields,
    plain,
    read_user_data,
    render,
    table,
)
from meda_cli.policies import LabelOption, RestartOption, TtlOption, policy_fields
from meda_cli.validation import build
from meda_core.errors import InvalidRequest
from meda_core.inputs.choices import MAX_STOP_TIMEOUT

if TYPE_CHECKING:  # the models are imported by the commands that use them, not by --help
    from meda_core.models import OperationResult, TemplateList, VMInfo, VMList

app = typer.Typer()


def _report(result: OperationResult, as_json: bool) -> None:
    render(result, as_json, lambda r: typer.echo(r.message))


def _show(info: VMInfo) -> None:
    d = info.details
    forwards = [f"{f.host_port} -> {f.guest_port}/{f.protocol.value}" for f in d.port_forwards]
    fields(
        [
            ("name", info.name),
            ("state", info.state.value),
            ("ip", info.ip),
            ("labels", _labels(info.labels)),
            ("restart", _restart(info)),
            ("expires", info.lifecycle.expires),
            ("image", d.image),
            ("memory", d.memory),
            ("cpus", d.cpus),
            ("disk", d.disk_size),
            ("network", d.network),
            ("mac", d.mac),
            ("gateway", d.gateway),
            ("subnet", d.subnet),
            ("tap", d.tap_device),
            ("forwards", ", ".join(forwards) or None),
            ("hypervisor", d.hypervisor),
            ("accelerator", d.accelerator),
            ("pid", d.pid),
            ("storage", d.storage),
            ("created", d.created),
            ("template", d.template),
            ("clone of", d.clone_of),
            ("snapshot", d.snapshot),
            ("last error", d.last_error),
            ("vm dir", d.vm_dir),
            ("console log", d.console_log),
            ("launch", d.launch),
        ]
    )


def _restart(info: VMInfo) -> str | None:
    lifecycle = info.lifecycle
    if lifecycle.restart == "no" and not lifecycle.restarts:
        return None
    return f"{lifecycle.restart.value} ({lifecycle.restarts} so far)"


@app.command()
@handles_errors
def create(
    name: str,
    memory: str = typer.Option("1G", help="Guest memory, e.g. 512M, 2G"),
    cpus: int = typer.Option(1, help="Virtual CPUs"),
    disk: str = typer.Option("10G", help="Disk size"),
    image: str | None = typer.Option(None, help="Image NAME[:TAG] (default: MEDA_DEFAULT_IMAGE)"),
    force: bool = typer.Option(False, "--force", help="Replace a VM of the same name"),
    template: bool = typer.Option(
        False, "--template", help="A VM to clone once snapshotted (gets a network of its own)"
    ),
    user_data: Path | None = UserDataOption,
    label: list[str] | None = LabelOption,
    ttl: int | None = TtlOption,
    restart: str = RestartOption,
    idempotency_key: str | None = IdempotencyKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Create a VM (stopped) from an image."""
    from meda_core.models import CreateVMRequest

    request = build(
        CreateVMRequest,
        name=name,
        memory=memory,
        cpus=cpus,
        disk=disk,
        image=image,
        force=force,
        template=template,
        user_data=read_user_data(user_data),
        **policy_fields(label, ttl, restart),
    )
    _report(keyed_api(idempotency_key).create_vm(request), as_json)


@app.command("list")
@handles_errors
def list_(
    label: list[str] | None = typer.Option(
        None, "--label", "-l", help="Only VMs with this label: KEY=VALUE or KEY (repeat: all)"
    ),
    state: str | None = typer.Option(None, help="Only VMs in this state (running, stopped, …)"),
    as_json: bool = JsonOption,
) -> None:
    """List VMs (those with the labels and state given)."""
    from meda_core.models import VMState

    try:
        wanted = None if state is None else VMState(state)
    except ValueError:
        choices = ", ".join(s.value for s in VMState)
        raise InvalidRequest(f"unknown state {state!r}: one of {choices}", state=state) from None
    render(api().list_vms(label, wanted), as_json, _table)


def _table(result: VMList) -> None:
    rows = [
        (v.name, v.state.value, v.ip, v.cpus, v.memory, v.disk, v.image, _labels(v.labels))
        for v in result.vms
    ]
    table(("name", "state", "ip", "cpus", "memory", "disk", "image", "labels"), rows)


def _labels(labels: dict[str, str]) -> str | None:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items())) or None


@app.command()
@handles_errors
def get(name: str, as_json: bool = JsonOption) -> None:
    """Show one VM."""
    render(api().get_vm(name), as_json, _show)


@app.command()
@handles_errors
def start(
    name: str,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would run; start nothing"),
    hypervisor: str | None = typer.Option(None, help="With --dry-run: another hypervisor's plan"),
    as_json: bool = JsonOption,
) -> None:
    """Start a VM (or show, with --dry-run, the command line and config it would use)."""
    if dry_run:
        typer.echo(json.dumps(api().plan_vm(name, hypervisor), indent=2))
        return
    _report(api().start_vm(name), as_json)


ForceOption = typer.Option(
    False, "--force", help="Kill the guest at once, without asking it (ACPI) to power off"
)
TimeoutOption = typer.Option(
    None,
    "--timeout",
    min=0,
    max=MAX_STOP_TIMEOUT,
    metavar="SECONDS",
    help="Seconds the guest gets to power off on ACPI before it is killed (0: like --force)",
)


@app.command()
@handles_errors
def stop(
    name: str,
    force: bool = ForceOption,
    timeout: float | None = TimeoutOption,
    as_json: bool = JsonOption,
) -> None:
    """Power a VM off (ACPI, then forced after --timeout, default MEDA_STOP_TIMEOUT seconds)."""
    _report(api().stop_vm(name, force, timeout), as_json)


@app.command()
@handles_errors
def delete(
    name: str,
    force: bool = ForceOption,
    timeout: float | None = TimeoutOption,
    as_json: bool = JsonOption,
) -> None:
    """Delete a VM and its disk (a running one is killed at once).

    --timeout S first gives a running guest S seconds to power off (ACPI)."""
    _report(api().delete_vm(name, force, timeout), as_json)


@app.command()
@handles_errors
def ttl(
    name: str,
    seconds: int = typer.Argument(..., help="Seconds from now until the VM is deleted"),
    as_json: bool = JsonOption,
) -> None:
    """Give a VM a new deadline: it is deleted SECONDS from now (a server deletes it)."""
    from meda_core.models import TtlRequest

    info = api().set_ttl(name, build(TtlRequest, ttl=seconds))
    render(info, as_json, lambda i: typer.echo(f"VM {i.name} expires {plain(i.lifecycle.expires)}"))


@app.command()
@handles_errors
def snapshot(name: str, as_json: bool = JsonOption) -> None:
    """Save a running VM's memory, devices and disk as they are now (it keeps running)."""
    _report(api().snapshot_vm(name), as_json)


@app.command()
@handles_errors
def restore(name: str, as_json: bool = JsonOption) -> None:
    """Start a stopped VM from its snapshot (its disk changes since then are dropped)."""
    _report(api().restore_vm(name), as_json)


@app.command()
@handles_errors
def clone(
    source: str,
    name: str,
    label: list[str] | None = LabelOption,
    ttl: int | None = TtlOption,
    restart: str = RestartOption,
    idempotency_key: str | None = IdempotencyKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Start NAME as a clone of the template SOURCE, from SOURCE's snapshot."""
    from meda_core.models import CloneRequest

    request = build(CloneRequest, name=name, **policy_fields(label, ttl, restart))
    _report(keyed_api(idempotency_key).clone_vm(source, request), as_json)


@app.command()
@handles_errors
def templates(as_json: bool = JsonOption) -> None:
    """List templates: VMs that can be cloned."""
    render(api().list_templates(), as_json, _template_table)


def _template_table(result: TemplateList) -> None:
    rows = [
        (
            t.name,
            t.image,
            t.memory,
            t.cpus,
            t.disk,
            t.snapshot.created.strftime("%Y-%m-%d %H:%M:%S") if t.snapshot else None,
            ", ".join(t.clones),
        )
        for t in result.templates
    ]
    table(("name", "image", "memory", "cpus", "disk", "snapshot", "clones"), rows)
