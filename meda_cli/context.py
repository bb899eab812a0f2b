"""The ``Meda`` instance a CLI command works on, and error handling around commands."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from meda_cli.output import fail
from meda_core.app import Meda
from meda_core.errors import MedaError

P = ParamSpec("P")
R = TypeVar("R")


_instance: Meda | None = None


def meda() -> Meda:
    """The ``Meda`` commands act on: built from the environment on first use."""
    global _instance
    if _instance is None:
        _instance = Meda()
    return _instance


def use(instance: Meda | None) -> None:
    """Make commands act on ``instance`` (tests, embedding programs)."""
    global _instance
    _instance = instance


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
