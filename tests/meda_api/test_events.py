"""The event journal: ids, reasons, replay by ``since`` and ``Last-Event-ID``, JSON pages."""

from __future__ import annotations

import json
from typing import Any

import httpx
from fastapi.testclient import TestClient

from meda_core.facade import Meda
from meda_core.models import CreateVMRequest
from tests.conftest import ServeApi


def _page(client: TestClient, query: str = "") -> dict[str, Any]:
    answer = client.get("/api/v1/events?format=json" + query)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    page: dict[str, Any] = answer.json()
    return page


def test_events_have_ids_and_say_which_request_caused_them(client: TestClient) -> None:
    created = client.post("/api/v1/vms", json={"name": "vm1", "labels": {"owner": "ci"}})
    client.post("/api/v1/vms/vm1/start")
    events = _page(client)["events"]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    first = events[0]["data"]
    assert (first["kind"], first["reason"]) == ("created", "request")
    assert first["request_id"] == created.headers["x-request-id"]
    assert first["labels"] == {"owner": "ci"}


def test_pages_go_on_from_the_last_id(client: TestClient) -> None:
    for name in ("a", "b", "c"):
        client.post("/api/v1/vms", json={"name": name})
    first = _page(client, "&limit=2")
    assert first["count"] == 2
    rest = _page(client, f"&since={first['next']}")
    assert [e["data"]["vm"] for e in first["events"] + rest["events"]] == ["a", "b", "c"]
    assert _page(client, f"&since={rest['next']}") == {
        "events": [],
        "count": 0,
        "next": rest["next"],
    }


def _sse(
    url: str, headers: dict[str, str], count: int, path: str = "/api/v1/events"
) -> list[dict[str, Any]]:
    """The first ``count`` events of the server's stream."""
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", url + path, headers=headers, timeout=10) as stream:
        event: dict[str, Any] = {}
        for line in stream.iter_lines():
            if line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif not line and event:
                events.append(event)
                event = {}
                if len(events) == count:
                    break
    return events


def _first_of(meda: Meda, names: tuple[str, ...]) -> int:
    """Create VMs ``names``; the id of the first one's event."""
    for name in names:
        meda.vms.create(CreateVMRequest(name=name))
    return meda.store.journal_since(0, 1)[0][0]


def test_a_reconnecting_client_gets_what_it_missed_then_what_comes(
    fake_meda: Meda, fake_image: str, serve_api: ServeApi
) -> None:
    url = serve_api(fake_meda)
    first = _first_of(fake_meda, ("a", "b", "c"))
    replayed = _sse(url, {"Last-Event-ID": str(first)}, 2)
    assert [e["data"]["vm"] for e in replayed] == ["b", "c"]
    assert [e["id"] for e in replayed] == [first + 1, first + 2]


def test_since_wins_over_last_event_id_and_a_bad_one_is_refused(
    fake_meda: Meda, fake_image: str, serve_api: ServeApi
) -> None:
    url = serve_api(fake_meda)
    first = _first_of(fake_meda, ("a", "b"))
    replayed = _sse(f"{url}/api/v1/events?since={first}", {"Last-Event-ID": "0"}, 1, path="")
    assert [e["data"]["vm"] for e in replayed] == ["b"]
    answer = httpx.get(url + "/api/v1/events", headers={"Last-Event-ID": "nonsense"})
    assert answer.status_code == 400 and answer.json()["code"] == "INVALID_REQUEST"


def test_ids_past_what_the_journal_can_hold_are_refused_or_capped(client: TestClient) -> None:
    huge = str(2**64)
    answer = client.get("/api/v1/events", params={"format": "json", "since": huge})
    assert answer.status_code == 400, answer.text
    page = client.get(
        "/api/v1/events", params={"format": "json"}, headers={"Last-Event-ID": "9" * 30}
    )
    assert page.status_code == 200 and page.json()["events"] == []
