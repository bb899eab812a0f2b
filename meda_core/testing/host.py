"""Looking at the host for what meda left behind: processes and sockets."""

from __future__ import annotations

from pathlib import Path


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live (not zombie) processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_text():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def open_sockets(pid: int) -> int:
    """How many sockets process ``pid`` holds open."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += fd.readlink().name.startswith("socket:")
        except OSError:
            continue  # closed while we looked
    return count


def unix_sockets_under(directory: Path) -> list[str]:
    """Bound Unix sockets whose path lies under ``directory`` (this network namespace)."""
    prefix = str(directory)
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    return sorted(
        fields[7] for line in lines
        if len(fields := line.split()) > 7 and fields[7].startswith(prefix)
    )  # fmt: skip
