"""The operation table is the only list of operations: the app's routes, RemoteApi and
LocalApi are made from it, and each entry agrees with its core call."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from meda_api import create_app
from meda_api.app import API_PREFIX
from meda_core.facade import Meda
from meda_core.interface.calls import LocalApi, MedaApi
from meda_core.interface.endpoint import Endpoint
from meda_core.interface.remote import RemoteApi
from meda_core.interface.table import TABLE

ROOT = Path(__file__).resolve().parents[2]
#: Routes that are not API operations: the docs pages, their assets, the schema, metrics.
NOT_OPERATIONS = {
    "/api/v1/openapi.json",
    "/swagger-ui",
    "/redoc",
    "/static/docs/{name}",
    "/metrics",
    "/mcp",  # the MCP tools (meda_api.mcp): they call the table's operations
}
#: What an API object has besides the operations: how it makes a call, and (remote) closing
#: and a copy that sends an Idempotency-Key.
PLUMBING = {LocalApi: {"invoke"}, RemoteApi: {"invoke", "close", "idempotent"}}


def _documented(doc: dict[str, Any]) -> set[tuple[str, str, str, str, str]]:
    return {
        (path, method.upper(), op["operationId"], min(op["responses"]), op["tags"][0])
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }


def test_the_schema_documents_exactly_the_table(fake_meda: Meda) -> None:
    declared = {
        (API_PREFIX + e.path, e.method, e.operation_id or "", str(e.status), e.tag) for e in TABLE
    }
    assert _documented(create_app(fake_meda).openapi()) == declared


def test_every_route_of_the_app_comes_from_the_table(fake_meda: Meda) -> None:
    app = create_app(fake_meda)
    table_paths = {API_PREFIX + e.path for e in TABLE}
    paths = {getattr(route, "path", None) for route in app.routes} - {None}
    assert paths - table_paths == NOT_OPERATIONS


def test_meda_api_declares_routes_only_from_the_table() -> None:
    """No router, decorator or hand-added API route anywhere but meda_api/routes.py."""
    for source in (ROOT / "meda_api").rglob("*.py"):
        if source.name == "routes.py":
            continue
        text = source.read_text()
        for made_by_hand in ("APIRouter", "add_api_route", "@app.", "@router.", "api_route("):
            assert made_by_hand not in text, f"{source.relative_to(ROOT)} has {made_by_hand}"


@pytest.mark.parametrize("api", [LocalApi, RemoteApi])
def test_the_apis_have_exactly_the_tables_operations(api: type[MedaApi]) -> None:
    public = {name for name in dir(api) if not name.startswith("_")}
    assert public - PLUMBING[api] == {e.name for e in TABLE}
    for endpoint in TABLE:  # each one the table's, not a method written beside it
        assert isinstance(inspect.getattr_static(api, endpoint.name), Endpoint)


@pytest.mark.parametrize("endpoint", TABLE, ids=lambda e: e.name)
def test_each_entry_declares_its_calls_parameters(endpoint: Endpoint[Any, Any]) -> None:
    """The call takes the ``Meda`` and then exactly the declared parameters (and the
    progress a background operation reports), under the names the request uses."""
    meda, *rest = inspect.signature(endpoint.call).parameters
    assert meda == "meda"
    progress = ["progress"] if endpoint.background else []
    assert rest == [p.name for p in endpoint.params] + progress
    assert set(endpoint.path.replace("}", "{").split("{")[1::2]) == {
        p.name for p in endpoint.params if p.where == "path"
    }
