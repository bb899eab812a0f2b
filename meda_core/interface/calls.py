"""The API's operations as typed calls returning its response models.

``MedaApi`` (the operation table) is what the CLI (and any program) talks to; ``LocalApi``
runs each call in this process on a :class:`~meda_core.facade.Meda`, and
:class:`~meda_core.interface.remote.RemoteApi` sends it to a ``meda serve`` over HTTP. The API's
routes run the same core calls, so both give the same answers.
"""

from __future__ import annotations

from typing import Any

from meda_core.facade import Meda
from meda_core.interface.endpoint import Endpoint
from meda_core.interface.table import MedaApi

__all__ = ["LocalApi", "MedaApi"]


class LocalApi(MedaApi):
    """:class:`MedaApi` in this process."""

    def __init__(self, meda: Meda) -> None:
        self.meda = meda

    def invoke(self, endpoint: Endpoint[Any, Any], /, *args: Any, **kwargs: Any) -> Any:
        return endpoint.call(self.meda, *args, **kwargs)
