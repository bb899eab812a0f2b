"""MEDA_HOME belongs to its operator: umask 077, directories 0700, files 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from meda_core.errors import InvalidRequest

#: What meda and the programs it runs (qemu, qemu-img, ssh-keygen) create: owner only.
UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600
_OTHERS = 0o077


def restrict_process() -> None:
    """Files this process and its children create from now on are its owner's alone."""
    os.umask(UMASK)


def create_private(path: Path) -> int:
    """Open ``path`` for writing, created or truncated, mode 0600 whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode through O_CREAT
    return fd


def private_home(home: Path) -> None:
    """Make ``home`` (0700), or tighten one an older meda left readable by others.

    Also sets the process umask, so that what meda creates below it stays private.
    """
    restrict_process()
    _check_folders_above(home)
    home.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _check_owned(home)
    if os.stat(home).st_mode & stat.S_ISVTX:
        # chmod 0700 of /tmp would break the host: a shared directory is not a home.
        raise InvalidRequest(
            f"MEDA_HOME {home} is a shared directory (sticky bit, like /tmp): "
            "give meda a directory of its own",
            home=str(home),
        )
    tighten(home)


def _check_folders_above(home: Path) -> None:
    """No one but root and this user may rename MEDA_HOME or a folder that leads to it:
    whoever can swap the folder can swap meda's state."""
    me = os.geteuid()
    for folder in home.resolve().parents:
        if not folder.exists():
            continue
        info = os.stat(folder)
        others_write = info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX
        if info.st_uid not in (0, me) or others_write:
            raise InvalidRequest(
                f"{folder}, above MEDA_HOME, can be changed by other users, who could then "
                "replace meda's state: put MEDA_HOME where only root and this user can write",
                home=str(home),
                folder=str(folder),
            )


def _check_owned(home: Path) -> None:
    me, owner = os.geteuid(), os.stat(home).st_uid
    if owner != me:
        raise InvalidRequest(
            f"MEDA_HOME {home} belongs to uid {owner}, not to this user ({me}): "
            "give meda a directory of its own",
            home=str(home),
        )


def tighten(root: Path) -> None:
    """Take every permission of group and others off ``root`` and all below it."""
    _strip_others(str(root))
    for parent, dirs, files in os.walk(root):  # never follows symlinks
        for name in (*dirs, *files):
            _strip_others(os.path.join(parent, name))


def _strip_others(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:  # removed meanwhile (another meda process at work)
        return
    if stat.S_ISLNK(mode) or not mode & _OTHERS:
        return
    try:
        os.chmod(path, stat.S_IMODE(mode) & ~_OTHERS)
    except FileNotFoundError:
        return
