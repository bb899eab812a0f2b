"""Fixtures of the API tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from meda_api import create_app
from meda_core.facade import Meda


@pytest.fixture
def client(fake_meda: Meda, fake_image: str) -> Iterator[TestClient]:
    """The API of the fake meda (with its ``default`` image), errors answered not raised."""
    with TestClient(
        create_app(fake_meda), raise_server_exceptions=False, base_url="http://localhost"
    ) as client:
        yield client
