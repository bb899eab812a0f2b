"""Validation of requests against cloud-hypervisor's own OpenAPI spec (strict: no key the
spec does not name)."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC = Path(__file__).with_name("cloud-hypervisor-openapi.yaml")
PREFIX = "/api/v1"


@cache
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return loaded


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if node.get("type") == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@cache
def _components() -> dict[str, Any]:
    return {"components": _strict(copy.deepcopy(spec()["components"]))}


def validate(method: str, path: str, body: Any) -> None:
    """Raise AssertionError or ValidationError unless the request is one the spec allows."""
    assert path.startswith(PREFIX), path
    endpoint = path[len(PREFIX) :]
    operation = spec()["paths"].get(endpoint, {}).get(method.lower())
    assert operation is not None, f"{method} {endpoint} is not in the spec"
    request_body = operation.get("requestBody")
    if request_body is None:
        assert body is None, f"{method} {endpoint} takes no body"
        return
    if body is None:
        assert not request_body.get("required"), f"{method} {endpoint} needs a body"
        return
    schema = request_body["content"]["application/json"]["schema"]
    jsonschema.validate(body, {**_components(), **schema})
