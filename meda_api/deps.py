"""Request dependencies: the ``Meda`` instance the app was built with; path parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from meda_core.facade import Meda
from meda_core.inputs.names import IMAGE_REF_PATTERN, VM_NAME_PATTERN
from meda_core.interface.calls import LocalApi


def _meda(request: Request) -> Meda:
    meda: Meda = request.app.state.meda
    return meda


def _api(request: Request) -> LocalApi:
    return LocalApi(_meda(request))


MedaDep = Annotated[Meda, Depends(_meda)]
ApiDep = Annotated[LocalApi, Depends(_api)]
# The patterns are published in the schema; the core checks them, with a clear message.
VMName = Annotated[str, Path(description="VM name", json_schema_extra={"pattern": VM_NAME_PATTERN})]
ImageRef = Annotated[
    str, Path(description="Image NAME[:TAG]", json_schema_extra={"pattern": IMAGE_REF_PATTERN})
]
