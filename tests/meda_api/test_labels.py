"""Labels on VMs and the list's filters; a ttl set through the API."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


def _create(client: TestClient, name: str, **fields: object) -> int:
    return client.post("/api/v1/vms", json={"name": name, **fields}).status_code


def _names(client: TestClient, query: str) -> list[str]:
    answer = client.get("/api/v1/vms" + query)
    assert answer.status_code == 200, answer.text
    return sorted(vm["name"] for vm in answer.json()["vms"])


def test_labels_are_shown_and_select_vms(client: TestClient) -> None:
    assert _create(client, "a", labels={"owner": "ci", "team/x": "blue"}) == 201
    assert _create(client, "b", labels={"owner": "ci"}) == 201
    assert _create(client, "c") == 201
    assert client.post("/api/v1/vms/b/start").status_code == 200
    assert client.get("/api/v1/vms/a").json()["labels"] == {"owner": "ci", "team/x": "blue"}
    listed = {vm["name"]: vm["labels"] for vm in client.get("/api/v1/vms").json()["vms"]}
    assert listed == {"a": {"owner": "ci", "team/x": "blue"}, "b": {"owner": "ci"}, "c": {}}
    assert _names(client, "?label=owner=ci") == ["a", "b"]
    assert _names(client, "?label=owner=ci&label=team/x") == ["a"]
    assert _names(client, "?label=owner=ci&state=running") == ["b"]
    assert _names(client, "?label=owner=cd") == []
    assert client.get("/api/v1/vms?label=owner=ci").json()["count"] == 2


@pytest.mark.parametrize(
    "labels",
    [
        {"Owner": "ci"},
        {"": "x"},
        {"-x": "y"},
        {"k": "a b"},
        {"k": "a=b"},
        {"k": "x" * 129},
        {f"k{i}": "v" for i in range(33)},
        {"k": 1},
    ],
    ids=["upper", "empty", "dash-first", "space", "equals", "long", "too-many", "not-text"],
)
def test_bad_labels_are_refused_and_make_nothing(client: TestClient, labels: object) -> None:
    answer = client.post("/api/v1/vms", json={"name": "vm1", "labels": labels})
    assert answer.status_code in (400, 422), answer.text
    assert set(answer.json()) == {"error", "code", "details"}
    assert client.get("/api/v1/vms").json()["count"] == 0


@pytest.mark.parametrize("query", ["?label=Bad=x", "?label=k=a%20b", "?state=sleeping"])
def test_bad_filters_are_refused(client: TestClient, query: str) -> None:
    answer = client.get("/api/v1/vms" + query)
    assert answer.status_code in (400, 422), answer.text
    assert set(answer.json()) == {"error", "code", "details"}


def test_a_ttl_is_shown_and_set_anew(client: TestClient) -> None:
    assert _create(client, "vm1", ttl=600, restart="on-failure") == 201
    lifecycle = client.get("/api/v1/vms/vm1").json()["lifecycle"]
    assert lifecycle["restart"] == "on-failure" and lifecycle["restarts"] == 0
    first = lifecycle["expires"]
    answer = client.post("/api/v1/vms/vm1/ttl", json={"ttl": 7200})
    assert answer.status_code == 200, answer.text
    assert answer.json()["lifecycle"]["expires"] > first
    assert client.post("/api/v1/vms/vm1/ttl", json={"ttl": 0}).status_code in (400, 422)
    assert client.post("/api/v1/vms/nope/ttl", json={"ttl": 5}).status_code == 404
    assert client.post("/api/v1/vms", json={"name": "x", "restart": "never"}).status_code in (
        400,
        422,
    )
