"""Image commands: ``meda images [list|import]``, ``pull``, ``push``, ``rmi``, ``prune``,
``create-image`` and ``run``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from meda_cli.context import api, handles_errors, meda
from meda_cli.idempotency import IdempotencyKeyOption, keyed_api
from meda_cli.output import JsonOption, UserDataOption, read_user_data, render, table
from meda_cli.policies import LabelOption, RestartOption, TtlOption, policy_fields
from meda_cli.progress import transfer
from meda_cli.validation import build

if TYPE_CHECKING:  # the models are imported by the commands that use them, not by --help
    from meda_core.models import (
        Image,
        ImageList,
        ImageResult,
        OperationResult,
        PruneResult,
        RunResult,
    )

app = typer.Typer(help="Manage images in the local store.", invoke_without_command=True)
commands = typer.Typer()


READY_PORT_HELP = "Guest port that answers once it is ready (22: SSH); 0: none"


def _say(result: ImageResult | OperationResult | PruneResult | RunResult) -> None:
    typer.echo(result.message)


def _done(image: Image, message: str, as_json: bool, digest: str | None = None) -> None:
    """Report an image operation: the API's ImageResult with --json, its message otherwise."""
    from meda_core.models import ImageResult
    from meda_core.vms.views import image_info

    result = ImageResult(success=True, message=message, image=image_info(image), digest=digest)
    render(result, as_json, _say)


@app.callback()
def images(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """List images (the default), or import one."""
    if ctx.invoked_subcommand is None:
        list_(as_json=as_json)


@app.command("list")
@handles_errors
def list_(as_json: bool = JsonOption) -> None:
    """List images."""
    render(api().list_images(), as_json, _table)


def _table(result: ImageList) -> None:
    rows = [
        (
            i.name,
            i.tag,
            i.size,
            i.registry,
            (i.digest or "")[:19],
            i.ready_port,
            i.cmdline,
            ", ".join(i.used_by),
        )
        for i in result.images
    ]
    table(("name", "tag", "size", "registry", "digest", "ready port", "cmdline", "used by"), rows)


@app.command("import")
@handles_errors
def import_(
    ref: str = typer.Argument(..., metavar="NAME[:TAG]"),
    disk: Path | None = typer.Option(None, help="Base disk (qcow2 or raw)"),
    kernel: Path | None = typer.Option(None, help="Kernel for direct boot"),
    initrd: Path | None = typer.Option(None, help="Initrd for direct boot"),
    cmdline: str | None = typer.Option(
        None,
        help="Kernel command line; needed with --kernel and --disk (where the root file "
        "system is, e.g. 'console=ttyS0 root=/dev/vda rw'); default with --kernel alone: "
        "'console=ttyS0'",
    ),
    ready_port: int | None = typer.Option(None, help=READY_PORT_HELP + "; unset: none"),
    as_json: bool = JsonOption,
) -> None:
    """Import local files as an image."""
    image = meda().images.import_files(ref, disk, kernel, initrd, cmdline, ready_port=ready_port)
    _done(image, f"Imported image {image.ref}", as_json)


@commands.command()
@handles_errors
def pull(
    image: str = typer.Argument(..., help="NAME[:TAG] or host/org/name:tag"),
    registry: str | None = typer.Option(None, help="Registry (default ghcr.io)"),
    org: str | None = typer.Option(None, help="Organisation (default cirunlabs)"),
    ready_port: int | None = typer.Option(None, help=READY_PORT_HELP + "; unset: the image's"),
    idempotency_key: str | None = IdempotencyKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Pull an image from a registry."""
    from meda_core.models import PullRequest

    request = build(PullRequest, image=image, registry=registry, org=org, ready_port=ready_port)
    with transfer(f"pull {image}", quiet=as_json) as progress:
        result = keyed_api(idempotency_key).pull_image(request, progress)
    render(result, as_json, _say)


@commands.command()
@handles_errors
def push(
    name: str = typer.Argument(..., help="Local image NAME[:TAG]"),
    target: str = typer.Argument(..., help="NAME[:TAG] or host/org/name:tag"),
    registry: str | None = typer.Option(None),
    org: str | None = typer.Option(None),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check, but move nothing"),
    as_json: bool = JsonOption,
) -> None:
    """Push a local image to a registry."""
    from meda_core.models import PushRequest

    request = build(
        PushRequest, name=name, image=target, registry=registry, org=org, dry_run=dry_run
    )
    with transfer(f"push {name}", quiet=as_json) as progress:
        result = api().push_image(request, progress)
    render(result, as_json, _say)


@commands.command()
@handles_errors
def rmi(image: str, as_json: bool = JsonOption) -> None:
    """Remove an image (refused while a VM uses it)."""
    render(api().remove_image(image), as_json, _say)


@commands.command()
@handles_errors
def prune(
    all_: bool = typer.Option(False, "--all", help="Also unused images imported locally"),
    force: bool = typer.Option(False, "--force", help="Do not ask"),
    as_json: bool = JsonOption,
) -> None:
    """Remove unused pulled images (all unused with --all), dangling blobs, partial pulls."""
    from meda_core.models import PruneRequest

    if not force and not as_json and not typer.confirm("Remove unused images and blobs?"):
        raise typer.Exit(1)
    render(api().prune_images(build(PruneRequest, all=all_, force=True)), as_json, _say)


@commands.command("create-image")
@handles_errors
def create_image(
    name: str,
    from_vm: str = typer.Option(..., "--from-vm", help="A stopped VM"),
    tag: str = typer.Option("latest"),
    registry: str | None = typer.Option(None),
    org: str | None = typer.Option(None),
    ready_port: int | None = typer.Option(None, help=READY_PORT_HELP + "; unset: the VM's image's"),
    as_json: bool = JsonOption,
) -> None:
    """Make an image from a stopped VM's disk."""
    from meda_core.models import CreateImageRequest

    request = build(
        CreateImageRequest,
        name=name,
        tag=tag,
        registry=registry,
        org=org,
        from_vm=from_vm,
        ready_port=ready_port,
    )
    render(api().create_image(request), as_json, _say)


@commands.command()
@handles_errors
def run(
    image: str,
    name: str = typer.Option(..., help="Name of the new VM"),
    registry: str | None = typer.Option(None),
    org: str | None = typer.Option(None),
    memory: str = typer.Option("1G"),
    cpus: int = typer.Option(1),
    disk: str = typer.Option("10G"),
    no_start: bool = typer.Option(False, "--no-start", help="Create only"),
    cold: bool = typer.Option(False, "--cold", help="Boot from scratch, not from a template"),
    ready_port: int | None = typer.Option(None, help=READY_PORT_HELP + "; unset: the image's"),
    ready_agent: bool = typer.Option(
        False, "--ready-agent", help="Ready once the guest's agent answers (not a port)"
    ),
    user_data: Path | None = UserDataOption,
    label: list[str] | None = LabelOption,
    ttl: int | None = TtlOption,
    restart: str = RestartOption,
    idempotency_key: str | None = IdempotencyKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Pull an image if needed and start a VM from it.

    The VM is a clone of the image's warm template, or a cold boot. Runs never wait for a
    template: the first run of an image with a ready port (or with --ready-agent) boots
    cold and leaves its template to a background build."""
    from meda_core.models import RunRequest

    request = build(
        RunRequest,
        image=image,
        name=name,
        registry=registry,
        org=org,
        memory=memory,
        cpus=cpus,
        disk=disk,
        no_start=no_start,
        cold=cold,
        ready_port=ready_port,
        ready_agent=ready_agent,
        user_data=read_user_data(user_data),
        **policy_fields(label, ttl, restart),
    )
    with transfer(f"pull {image}", quiet=as_json) as progress:
        result = keyed_api(idempotency_key).run_image(request, progress)
    render(result, as_json, _say)


@app.command("build-template", hidden=True)
@handles_errors
def build_template(name: str) -> None:
    """Build the template a run asked for (started by ``run``; logs to its .log file)."""
    from meda_cli.templates import job_file, read_job

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    home = meda().settings.home
    try:
        job = read_job(home, name)
    except FileNotFoundError:  # a build of the same template took it and is done
        typer.echo(f"no job for template {name}: nothing to do")
        return
    try:
        done = meda().warm_runs.build(job)
    finally:
        job_file(home, name).unlink(missing_ok=True)
    typer.echo(done.model_dump_json())


@app.command("build")
@handles_errors
def build_(
    ref: str = typer.Argument("debian:12", metavar="NAME[:TAG]"),
    suite: str = typer.Option("bookworm", help="Debian suite"),
    mirror: str = typer.Option("http://deb.debian.org/debian", help="Debian mirror"),
    as_json: bool = JsonOption,
) -> None:
    """Build a Debian base image (cloud-init, SSH, DHCP) from Debian's mirror; cached."""
    from meda_core.images import build as imagebuild

    spec = imagebuild.BuildSpec(suite=suite, mirror=mirror)
    work = meda().settings.cache_dir / "builds" / "work"
    log = (lambda line: None) if as_json else (lambda line: typer.echo(line, err=True))
    image = imagebuild.build(meda().images, ref, spec, work, log)
    _done(image, f"Image {image.ref} is ready", as_json)


# `meda images rmi|prune` too: where users of `docker image rm|prune` look for them.
app.command("rmi")(rmi)
app.command("prune")(prune)
