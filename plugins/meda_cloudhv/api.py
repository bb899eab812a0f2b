"""The VMM's own REST API over its Unix socket, through httpx's Unix-socket transport."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from meda_core.plugin import BackendError

BASE = "http://localhost/api/v1"


class VmmApi:
    def __init__(self, socket: Path, timeout: float = 10.0) -> None:
        self.socket = socket
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket)), base_url=BASE, timeout=timeout
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> VmmApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, endpoint: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self._client.request(method, f"/{endpoint}", json=body)
        except httpx.TransportError as exc:
            raise BackendError(f"cloud-hypervisor API at {self.socket}: {exc}") from None
        if response.status_code >= 300:
            raise BackendError(
                f"cloud-hypervisor {endpoint}: {_messages(response)}",
                status=response.status_code,
                endpoint=endpoint,
            )
        return response.json() if response.content else None

    def ping(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "vmm.ping")
        return result

    def info(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "vm.info")
        return result

    def state(self) -> str | None:
        """The VM's state (Created, Running, Shutdown, Paused…), None with no VM created."""
        try:
            return str(self.info()["state"])
        except BackendError as error:
            if error.details.get("status") == 404:
                return None
            raise

    def put(self, endpoint: str, body: dict[str, Any] | None = None) -> None:
        self._call("PUT", endpoint, body)


def _messages(response: httpx.Response) -> str:
    """The VMM answers errors with a JSON array of strings (the error chain)."""
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} {response.text.strip()}"
    if isinstance(body, list):
        return f"{response.status_code}: " + ": ".join(str(m) for m in body)
    return f"{response.status_code}: {body}"
