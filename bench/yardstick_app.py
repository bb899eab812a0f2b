#!/usr/bin/env python3
"""The read yardstick: a bare FastAPI app with one synchronous GET route returning the VM
list it holds in memory, served like ``meda serve`` (same uvicorn, same settings, one
worker).

    .venv/bin/python bench/yardstick_app.py --port PORT --body FILE

``FILE`` holds the JSON body to serve (bench/reads.py writes meda's own answer there, so both
servers render the same 50 VM-shaped dicts).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI


def make_app(body: dict[str, Any]) -> FastAPI:
    app = FastAPI()

    @app.get("/api/v1/vms")
    def list_vms() -> dict[str, Any]:
        return body

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True)
    args = parser.parse_args()
    app = make_app(json.loads(args.body.read_text()))
    # The settings meda_cli.commands.serve gives uvicorn (no TLS, no access log).
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
