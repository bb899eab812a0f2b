"""Builds the FastAPI application around a :class:`~meda_core.app.Meda` instance."""

from __future__ import annotations

from fastapi import FastAPI

from meda_api.errors import install_error_handlers
from meda_api.routers import system, vms
from meda_core import __version__
from meda_core.app import Meda

API_PREFIX = "/api/v1"


def create_app(meda: Meda | None = None) -> FastAPI:
    """The API app; builds a ``Meda`` from the environment unless one is given."""
    app = FastAPI(
        title="meda",
        version=__version__,
        description="Micro-VMs behind a REST API; every backend a plugin.",
        docs_url="/swagger-ui",
        redoc_url=None,
        openapi_url=f"{API_PREFIX}/openapi.json",
    )
    app.state.meda = meda or Meda()
    install_error_handlers(app)
    app.include_router(vms.router, prefix=API_PREFIX)
    app.include_router(system.router, prefix=API_PREFIX)
    return app
