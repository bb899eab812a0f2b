"""Request ids and Prometheus metrics: the numbers move by exactly what happened."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_lifecycle_moves_the_metrics_by_what_happened(client: TestClient) -> None:
    before = scrape(client)
    assert client.post("/api/v1/vms", json={"name": "m1"}).status_code == 201
    assert client.post("/api/v1/vms/m1/start").status_code == 200
    during = scrape(client)
    assert value(during, "meda_vms", state="running") == 1
    assert client.post("/api/v1/vms/m1/stop").status_code == 200
    assert client.delete("/api/v1/vms/m1").status_code == 200
    assert client.get("/api/v1/vms/m1").status_code == 404
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for kind in ("created", "started", "stopped", "deleted"):
        assert moved("meda_vm_events_total", kind=kind) == 1, kind
    assert moved("meda_http_requests_total", method="POST", route="/api/v1/vms", status="201") == 1
    assert (
        moved("meda_http_requests_total", method="GET", route="/api/v1/vms/{name}", status="404")
        == 1
    )
    assert moved("meda_errors_total", code="VM_NOT_FOUND") == 1
    assert (
        moved(
            "meda_http_request_duration_seconds_count",
            method="POST",
            route="/api/v1/vms/{name}/start",
        )
        == 1
    )
    assert value(after, "meda_vms", state="running") == 0


def test_every_answer_carries_a_request_id_and_errors_name_it(client: TestClient) -> None:
    ok = client.get("/api/v1/health")
    assert len(ok.headers["x-request-id"]) == 16
    missing = client.get("/api/v1/vms/nope")
    assert missing.json()["details"]["request_id"] == missing.headers["x-request-id"]
    given = client.get("/api/v1/vms/nope", headers={"X-Request-ID": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    assert given.json()["details"]["request_id"] == "trace-42"
    hostile = client.get("/api/v1/health", headers={"X-Request-ID": "a b\\nc"})
    assert hostile.headers["x-request-id"] != "a b\\nc"  # not echoed: a fresh id instead
