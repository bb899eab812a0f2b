"""What a CLI command works on — this host's ``Meda``, or a server at ``MEDA_URL`` — and
error handling around commands.

What a command works on is imported when it first asks for it: ``--help`` loads no
plugin, no pydantic model and no HTTP client, and a command sent to a server loads no
plugin (tests/meda_cli/test_startup.py)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from meda_cli.output import fail
from meda_core.errors import InvalidRequest, MedaError

if TYPE_CHECKING:
    from meda_core.facade import Meda
    from meda_core.interface.calls import MedaApi
    from meda_core.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")


_instance: Meda | None = None
_server: tuple[str, str | None, str | None] | None = None


def meda() -> Meda:
    """This host's ``Meda`` (built from the environment on first use), for the commands
    that only make sense where the VMs run."""
    global _instance
    if _server is not None:
        raise InvalidRequest(
            f"this command works on the meda host itself, not through {_server[0]}; "
            "run it there, or unset MEDA_URL"
        )
    if _instance is None:
        from meda_cli.templates import spawn_build
        from meda_core.facade import Meda

        _instance = Meda(local_settings())
        # This process exits once it has answered: template builds go on in their own.
        _instance.warm_runs.background = partial(spawn_build, _instance.settings.home)
    return _instance


def local_settings() -> Settings:
    """The environment's settings, with the network namespace that ``meda serve`` of this
    MEDA_HOME runs with (its server.json) when the environment names none: a command run
    in another shell acts on the same network as the server."""
    from meda_core.settings import Settings
    from meda_core.state import serverfile

    settings = Settings()
    written = serverfile.load(settings.home)
    if written is None or written.netns is None:
        return settings
    if "MEDA_NETNS" in os.environ:
        if settings.netns != written.netns:
            print(
                f"warning: MEDA_NETNS is {settings.netns or 'empty'} here, but meda serve "
                f"of {settings.home} runs with {written.netns}",
                file=sys.stderr,
            )
        return settings
    create = settings.netns_create or written.netns_create
    return settings.model_copy(update={"netns": written.netns, "netns_create": create})


def netns_origin(settings: Settings) -> str:
    """Where ``settings.netns`` came from, for messages."""
    from meda_core.state import serverfile

    if "MEDA_NETNS" in os.environ:
        return "MEDA_NETNS"
    return f"meda serve's {serverfile.path(settings.home)}"


def api() -> MedaApi:
    """The API the commands call: the server at ``MEDA_URL``, else this host."""
    if _server is not None:
        from meda_core.interface.remote import RemoteApi

        url, token, ca_file = _server
        return RemoteApi(url, token, ca_file=ca_file)
    from meda_core.interface.calls import LocalApi

    return LocalApi(meda())


def server_url() -> str | None:
    """The server the commands are sent to, or None: they act on this host."""
    return None if _server is None else _server[0]


def use(instance: Meda | None) -> None:
    """Make commands act on ``instance`` (tests, embedding programs)."""
    global _instance
    _instance = instance


def use_server(url: str | None, token: str | None = None, ca_file: str | None = None) -> None:
    """Send the commands to the meda server at ``url`` (None: act on this host).

    The token and CA not given here or in the environment come from MEDA_HOME/server.json
    when ``url`` is the server that wrote it.
    """
    global _server
    token = token or os.environ.get("MEDA_API_TOKEN") or None
    if url and (token is None or ca_file is None):
        from meda_core.settings import Settings
        from meda_core.state import serverfile

        written = serverfile.load(Settings().home)
        if written is not None and written.serves(url):
            token, ca_file = token or written.token, ca_file or written.ca_file
    _server = None if not url else (url, token, ca_file)


def handles_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a :class:`MedaError` into a message on stderr and the error's exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except MedaError as error:
            fail(error, bool(kwargs.get("as_json")))
            raise  # unreachable: fail() exits

    return wrapper
