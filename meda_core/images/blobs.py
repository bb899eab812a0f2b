"""Content-addressed blobs under ``MEDA_HOME/blobs/sha256/``: written once, renamed into place."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from meda_core.host.files import copy_sparse

_READ = 4 * 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_READ):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        if (
            algorithm != "sha256"
            or len(hexdigest) != 64
            or not all(c in "0123456789abcdef" for c in hexdigest)
        ):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / "sha256" / hexdigest

    def staging(self) -> Path:
        """A fresh directory on the blobs' file system, for files about to be added."""
        path = self.root / "staging" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def adopt(self, verified: Path, digest: str) -> Path:
        """Move a file whose digest was checked into the store (a no-op if present)."""
        dest = self.path(digest)
        if verified == dest:
            return dest  # already in the store
        if dest.exists():
            verified.unlink(missing_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(verified, 0o400)
            verified.replace(dest)
        return dest

    def add_file(self, source: Path) -> tuple[str, Path]:
        """Copy ``source`` in (sparsely); its digest and its path in the store."""
        staging = self.staging()
        try:
            tmp = staging / "blob"
            copy_sparse(source, tmp)
            digest = sha256_file(tmp)
            return digest, self.adopt(tmp, digest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def digests(self) -> set[str]:
        folder = self.root / "sha256"
        return {f"sha256:{p.name}" for p in folder.iterdir()} if folder.exists() else set()

    def remove_except(self, keep: Iterable[str]) -> list[str]:
        """Delete every blob not in ``keep`` and all staging leftovers; what was removed."""
        removed = sorted(self.digests() - set(keep))
        for digest in removed:
            self.path(digest).unlink(missing_ok=True)
        staging = self.root / "staging"
        if staging.exists():
            for leftover in staging.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
                removed.append(f"staging/{leftover.name}")
        return removed
