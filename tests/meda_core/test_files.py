"""The host's file helpers: files made whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from meda_core.host.files import atomic_file


def test_an_atomic_file_appears_only_once_made(tmp_path: Path) -> None:
    dest = tmp_path / "disk"
    with atomic_file(dest) as tmp:
        tmp.write_bytes(b"half")
        assert not dest.exists()  # nothing under the final name while it is being made
        tmp.write_bytes(b"whole")
    assert dest.read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk"]


def test_a_failed_atomic_file_leaves_nothing_and_keeps_an_older_one(tmp_path: Path) -> None:
    dest = tmp_path / "disk"
    dest.write_bytes(b"older")
    with pytest.raises(RuntimeError, match="power cut"), atomic_file(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("power cut")
    assert dest.read_bytes() == b"older"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk"]
