"""meda's REST API (FastAPI): the seed's endpoints under /api/v1."""

from meda_api.app import create_app

__all__ = ["create_app"]
