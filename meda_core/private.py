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
    home.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if os.stat(home).st_mode & stat.S_ISVTX:
        # chmod 0700 of /tmp would break the host: a shared directory is not a home.
        raise InvalidRequest(
            f"MEDA_HOME {home} is a shared directory (sticky bit, like /tmp): "
            "give meda a directory of its own",
            home=str(home),
        )
    tighten(home)


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
