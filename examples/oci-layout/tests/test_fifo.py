"""Hostile review (issue 16): a layout writer who plants special files."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from meda_oci_layout import LayoutRegistry

from meda_core.plugin import ImageFiles, Reference, no_progress


def test_a_fifo_where_a_layer_blob_should_be_does_not_hang_a_pull(
    backend: LayoutRegistry, reference: Callable[[str], Reference], tmp_path: Path
) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(os.urandom(4096))
    backend.push(ImageFiles(kernel=kernel, cmdline="x"), reference("v1"), no_progress)
    blobs = backend.root / "tests" / "guest" / "blobs" / "sha256"
    index = json.loads((backend.root / "tests" / "guest" / "index.json").read_bytes())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    layer = blobs / manifest["layers"][0]["digest"][7:]
    layer.unlink()
    os.mkfifo(layer)  # a writer of the layout folder plants a FIFO
    workdir = tmp_path / "pull"
    workdir.mkdir()
    outcome: list[object] = []

    def pull() -> None:
        try:
            outcome.append(backend.pull(reference("v1"), workdir, no_progress))
        except Exception as exc:
            outcome.append(exc)

    worker = threading.Thread(target=pull, daemon=True)
    worker.start()
    worker.join(5)
    hung = worker.is_alive()
    if hung:  # release it
        fd = os.open(layer, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(5)
    assert not hung, "the pull blocked in open() on a FIFO (no deadline in this backend)"
