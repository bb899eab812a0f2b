"""``meda cp`` from a hostile guest: what a guest's tar or file may do on the host (nothing
outside the destination), and what its error text may do to the terminal (nothing)."""

from __future__ import annotations

import errno
import io
import os
import stat
import string
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from meda_cli.commands import guest as cli_guest
from meda_cli.output import fail
from meda_core.errors import BackendError, InvalidRequest, PayloadTooLarge


class GuestApi:
    """``get_file`` as a guest answers it: a file's chunks, or (for a folder) a tar's."""

    def __init__(self, file: Iterator[bytes] | None = None, tar: bytes = b"") -> None:
        self.file, self.tar = file, tar

    def get_file(self, name: str, path: str, archive: object = None) -> Iterator[bytes]:
        if archive is None:
            if self.file is None:
                raise InvalidRequest("not a regular file", errno=errno.EISDIR)
            return self.file
        return iter([self.tar[i : i + 65536] for i in range(0, len(self.tar), 65536)])


@pytest.fixture
def guest(monkeypatch: pytest.MonkeyPatch) -> GuestApi:
    answers = GuestApi()
    monkeypatch.setattr(cli_guest, "api", lambda: answers)
    return answers


def archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return packed.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> Any:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info


def past_path_max(victim: str, content: bytes, depth: int = 18) -> bytes:
    """CVE-2025-4517's shape: symlinks whose resolution passes PATH_MAX, where
    os.path.realpath stops checking but the kernel goes on — out of the folder (Pythons
    before 3.11.13 let it past the ``data`` filter)."""
    long = "c" * 250
    members, prefix = [], ""
    for letter in string.ascii_lowercase[:depth]:
        members.append((member(os.path.join(prefix, long), tarfile.DIRTYPE, mode=0o755), None))
        members.append((member(os.path.join(prefix, letter), tarfile.SYMTYPE, long), None))
        prefix = os.path.join(prefix, letter)
    members.append((member(prefix + "/x", tarfile.SYMTYPE, "../" * 4), None))
    members.append((member("e", tarfile.SYMTYPE, prefix + "/x" + "/.." * (depth - 3)), None))
    members.append((member("e/" + victim), content))
    return archive(*members)


def test_a_tar_past_path_max_writes_nothing_outside(guest: GuestApi, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("ORIGINAL")
    guest.tar = past_path_max("victim.txt", b"GUEST")
    with pytest.raises(InvalidRequest, match="link"):
        cli_guest._download("vm", "/srv", tmp_path / "dest")
    assert victim.read_text() == "ORIGINAL"


@pytest.mark.parametrize(
    ("bad", "refusal"),
    [
        (member("in", tarfile.SYMTYPE, "../victim"), "link"),
        (member("in", tarfile.SYMTYPE, "plain"), "link"),
        (member("in", tarfile.LNKTYPE, "a"), "link"),
        (member("in", tarfile.CHRTYPE), "special"),
        (member("in", tarfile.FIFOTYPE), "special"),
        (member("../victim"), "outside"),
        (member("/abs"), "outside"),
        (member("a/../../victim"), "outside"),
    ],
)
def test_links_specials_and_escapes_are_refused(
    guest: GuestApi, tmp_path: Path, bad: tarfile.TarInfo, refusal: str
) -> None:
    (tmp_path / "victim").write_text("ORIGINAL")
    guest.tar = archive((member("a"), b"first"), (bad, b"" if bad.isreg() else None))
    with pytest.raises(InvalidRequest, match=refusal):
        cli_guest._download("vm", "/srv", tmp_path / "dest")
    assert (tmp_path / "victim").read_text() == "ORIGINAL"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]  # no half a copy


def test_a_folder_is_copied_into_a_new_folder_never_over_what_is_there(
    guest: GuestApi, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "authorized_keys").write_text("MINE")
    # The guest says its /etc/os-release is a folder and sends a tar of the user's files.
    guest.tar = archive((member(".ssh/authorized_keys"), b"GUEST"), (member(".bashrc"), b"x"))
    cli_guest._download("vm", "/etc/os-release", home)
    assert (home / ".ssh" / "authorized_keys").read_text() == "MINE"
    assert not (home / ".bashrc").exists()
    assert (home / "os-release" / ".ssh" / "authorized_keys").read_text() == "GUEST"
    with pytest.raises(InvalidRequest, match="exists"):  # never merged into
        cli_guest._download("vm", "/etc/os-release", home)


def test_a_link_where_the_copy_would_go_is_refused(guest: GuestApi, tmp_path: Path) -> None:
    outside, dest = tmp_path / "outside", tmp_path / "dest"
    outside.mkdir()
    dest.mkdir()
    (dest / "srv").symlink_to(outside)
    guest.tar = archive((member("f"), b"GUEST"))
    with pytest.raises(InvalidRequest, match="exists"):
        cli_guest._download("vm", "/srv", dest)
    assert list(outside.iterdir()) == []


def test_only_a_folder_the_guest_names_so_comes_as_a_tar(guest: GuestApi, tmp_path: Path) -> None:
    def refused(name: str, path: str, archive: object = None) -> Iterator[bytes]:
        assert archive is None, "asked for a tar"
        raise InvalidRequest("guest file: permission denied", errno=errno.EACCES)

    guest.get_file = refused  # type: ignore[method-assign]
    with pytest.raises(InvalidRequest, match="permission"):
        cli_guest._download("vm", "/etc/os-release", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_files_and_folders_come_without_setuid_bits(guest: GuestApi, tmp_path: Path) -> None:
    guest.tar = archive(
        (member("./", tarfile.DIRTYPE, mode=0o755), None),
        (member("./sub", tarfile.DIRTYPE, mode=0o1777), None),
        (member("./sub/run", mode=0o6755), b"#!/bin/sh\n"),
    )
    cli_guest._download("vm", "/srv", tmp_path / "dest")
    made = tmp_path / "dest/sub/run"
    assert made.read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE(made.stat().st_mode) == 0o755


def test_a_tar_over_the_cap_is_refused(
    guest: GuestApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDA_FILE_MAX_BYTES", "1000")
    guest.tar = archive((member("a"), b"x" * 600), (member("b"), b"x" * 600))
    with pytest.raises(PayloadTooLarge):
        cli_guest._download("vm", "/srv", tmp_path / "dest")


def test_a_file_that_never_ends_stops_at_the_cap_and_leaves_nothing(
    guest: GuestApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDA_FILE_MAX_BYTES", str(1024 * 1024))

    def endless() -> Iterator[bytes]:
        while True:
            yield b"z" * 65536

    guest.file = endless()
    with pytest.raises(PayloadTooLarge):
        cli_guest._download("vm", "/f", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_planted_partial_file_is_not_written_through(guest: GuestApi, tmp_path: Path) -> None:
    shared, victim = tmp_path / "shared", tmp_path / "victim"
    shared.mkdir()
    victim.write_text("ORIGINAL")
    for planted in (".f.meda-partial", ".f.partial"):
        (shared / planted).symlink_to(victim)
    guest.file = iter([b"GUEST"])
    cli_guest._download("vm", "/f", shared)
    assert victim.read_text() == "ORIGINAL"
    assert (shared / "f").read_bytes() == b"GUEST"
    assert stat.S_IMODE((shared / "f").stat().st_mode) == 0o600


def test_guest_text_in_an_error_cannot_drive_the_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    evil = "\x1b]0;owned\x07\x1b[2J"
    with pytest.raises(typer.Exit):
        fail(BackendError(f"tar of /srv failed in the guest: {evil}"), False)
    shown = capsys.readouterr().err
    assert "\x1b" not in shown and "\x07" not in shown
    assert "^[]0;owned^G^[[2J" in shown
