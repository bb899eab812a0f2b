"""Request dependencies: the ``Meda`` instance the app was built with."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from meda_core.app import Meda


def _meda(request: Request) -> Meda:
    meda: Meda = request.app.state.meda
    return meda


MedaDep = Annotated[Meda, Depends(_meda)]
