"""A protocol-level stand-in for the cloud-hypervisor binary, for tests only.

Run as ``fake_vmm.py --api-socket path=P [--log-file F]``: it serves the VMM's REST API on
P with the VMM's state rules (404 before vm.create or for a VM not booted, 405 for an
action not allowed in the current state, 204 on success, errors as a JSON array of
strings), writes a boot line to the serial file of the VmConfig, and records every request
(method, path, body) as JSON lines in ``$FAKE_VMM_LOG_DIR``. It boots nothing.
"""

from __future__ import annotations

import json
import os
import socketserver
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

BOOT_LINE = "fake-vmm: guest booted\n"
STATE: dict[str, Any] = {"vm": None, "state": None}
ALLOWED = {  # action -> states it is allowed in
    "vm.boot": {"Created"},
    "vm.shutdown": {"Running", "Paused"},
    "vm.power-button": {"Running"},
    "vm.pause": {"Running"},
    "vm.resume": {"Paused"},
    "vm.reboot": {"Running"},
    "vm.delete": {"Created", "Running", "Paused", "Shutdown"},
    "vm.snapshot": {"Paused"},
}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self, body: Any) -> None:
        with open(self.server.requests_path, "a") as log:  # type: ignore[attr-defined]
            log.write(json.dumps({"method": self.command, "path": self.path, "body": body}) + "\n")

    def do_GET(self) -> None:
        self._record(None)
        endpoint = self.path.removeprefix("/api/v1/")
        if endpoint == "vmm.ping":
            self._reply(200, {"version": "fake", "build_version": "fake", "pid": os.getpid()})
        elif endpoint == "vm.info":
            if STATE["vm"] is None:
                self._reply(404, ["VM is not created"])
            else:
                self._reply(200, {"config": STATE["vm"], "state": STATE["state"]})
        else:
            self._reply(404, [f"unknown endpoint {endpoint}"])

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self._record(body)
        endpoint = self.path.removeprefix("/api/v1/")
        if endpoint == "vmm.shutdown":
            self._reply(204)
            os._exit(0)
        if endpoint == "vm.restore":  # like the real VMM: config and state from the folder
            folder = Path(str((body or {}).get("source_url", "")).removeprefix("file://"))
            if STATE["vm"] is not None or not (folder / "config.json").exists():
                self._reply(500, ["Error restoring VM", f"cannot restore from {folder}"])
                return
            STATE.update(vm=json.loads((folder / "config.json").read_text()), state="Paused")
            self._reply(204)
            return
        if endpoint == "vm.create":
            if STATE["vm"] is not None:
                self._reply(405, ["VM is already created"])
                return
            if not isinstance(body, dict) or "payload" not in body:
                self._reply(400, ["Error parsing VmConfig", "missing field `payload`"])
                return
            STATE.update(vm=body, state="Created")
            self._reply(204)
            return
        if endpoint not in ALLOWED:
            self._reply(404, [f"unknown endpoint {endpoint}"])
            return
        if STATE["vm"] is None:
            self._reply(404, ["VM is not created"])
            return
        if STATE["state"] not in ALLOWED[endpoint]:
            self._reply(405, [f"{endpoint} is not allowed while the VM is {STATE['state']}"])
            return
        self._body = body if isinstance(body, dict) else {}
        error = self._act(endpoint)
        self._reply(500, ["Error booting VM", error]) if error else self._reply(204)

    def _act(self, endpoint: str) -> str | None:
        serial = (STATE["vm"] or {}).get("serial", {})
        if endpoint == "vm.boot":
            for disk in STATE["vm"].get("disks", []):
                if not Path(disk["path"]).exists():
                    return f"Cannot open disk path {disk['path']}"
            STATE["state"] = "Running"
            if serial.get("mode") == "File":
                with open(serial["file"], "a") as console:
                    console.write(BOOT_LINE)
        elif endpoint in ("vm.shutdown", "vm.power-button"):
            STATE["state"] = "Shutdown"
        elif endpoint == "vm.pause":
            STATE["state"] = "Paused"
        elif endpoint == "vm.resume":
            STATE["state"] = "Running"
        elif endpoint == "vm.delete":
            STATE.update(vm=None, state=None)
        elif endpoint == "vm.snapshot":
            folder = Path(str(self._body.get("destination_url", "")).removeprefix("file://"))
            (folder / "config.json").write_text(json.dumps(STATE["vm"]))
            (folder / "state.json").write_text("{}")
            (folder / "memory-ranges").write_bytes(b"\0" * 4096)
        return None


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main(argv: list[str]) -> int:
    options = dict(zip(argv[::2], argv[1::2], strict=False))
    socket_path = options["--api-socket"].removeprefix("path=").strip('"')
    server = Server(socket_path, Handler)
    log_dir = Path(os.environ.get("FAKE_VMM_LOG_DIR", "/tmp"))
    server.requests_path = log_dir / f"requests-{os.getpid()}.jsonl"  # type: ignore[attr-defined]
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
