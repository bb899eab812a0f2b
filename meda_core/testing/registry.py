"""A real OCI registry for tests: Debian's ``docker-registry`` on 127.0.0.1, temp storage."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meda_core.testing.host import free_port

BINARY = "docker-registry"


@contextmanager
def local_registry(root: Path, htpasswd: Path | None = None) -> Iterator[str]:
    """Run a registry storing under ``root``; yields its ``127.0.0.1:PORT``."""
    binary = shutil.which(BINARY)
    if binary is None:
        raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
    port = free_port()
    auth = f"auth:\n  htpasswd:\n    realm: meda-test\n    path: {htpasswd}\n" if htpasswd else ""
    config = root / "config.yml"
    root.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n"
        f"  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth
    )
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{address}/v2/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # answering, if only with 401: it is up
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(
                        "docker-registry did not start: " + (root / "registry.log").read_text()
                    ) from None
                time.sleep(0.05)
        yield address
    finally:
        process.terminate()
        process.wait(10)
        log.close()
