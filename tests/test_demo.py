"""scripts/demo.sh never sends its requests to a server it did not start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_refuses_a_port_another_server_holds(tmp_path: Path) -> None:
    """Before setting anything up, building or starting: nothing happens, and it says so."""
    home = tmp_path / "home"
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = {**os.environ, "MEDA_PORT": str(port), "MEDA_HOME": str(home)}
        demo = subprocess.Popen(
            ["bash", "scripts/demo.sh"],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = demo.communicate(timeout=30)
        finally:
            if demo.poll() is None:  # the demo went on: stop it and all it started
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
    assert demo.returncode == 1, out + err
    assert f"something already listens on 127.0.0.1:{port}" in err
    assert "==>" not in out and not home.exists()
