"""``--idempotency-key``: a command that creates something, safe to run again after a timeout."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from meda_cli.context import api, server_url
from meda_core.errors import InvalidRequest

if TYPE_CHECKING:
    from meda_core.interface.table import MedaApi

IdempotencyKeyOption: Any = typer.Option(
    None,
    "--idempotency-key",
    metavar="KEY",
    help="Sent as the request's Idempotency-Key (with MEDA_URL): run again with the same "
    "KEY and arguments, the command answers as the first run did and creates nothing twice",
    show_default=False,
)


def keyed_api(key: str | None) -> MedaApi:
    """The API the commands call, sending ``key`` with the calls that create something."""
    if key is None:
        return api()
    if server_url() is None:
        raise InvalidRequest(
            "--idempotency-key needs a server (MEDA_URL or --url): it makes a retry of a "
            "request to a server safe; a command on this host is not sent again",
            option="--idempotency-key",
        )
    from meda_core.interface.remote import RemoteApi

    remote = api()
    assert isinstance(remote, RemoteApi)
    return remote.idempotent(key)
