"""meda's managed SSH key: ed25519, made once under ``MEDA_HOME/ssh``, mode 0600."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from meda_core.errors import BackendUnavailable
from meda_core.host.locks import exclusive


def managed_key(home: Path) -> tuple[Path, str]:
    """The private key's path and the public key's text, generating them on first use."""
    folder = home / "ssh"
    private = folder / "id_ed25519"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)  # made before the key, or by an older meda: 0755
    with exclusive(folder / ".lock"):
        if not private.exists():
            try:
                argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "meda"]
                subprocess.run([*argv, "-f", str(private)], check=True, capture_output=True)
            except FileNotFoundError:
                raise BackendUnavailable(
                    "ssh-keygen not found (apt-get install openssh-client)"
                ) from None
        os.chmod(private, 0o600)
    return private, private.with_suffix(".pub").read_text().strip()
