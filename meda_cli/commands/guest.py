"""``meda exec NAME -- CMD…`` and ``meda cp``: commands and files in a guest, through its
agent (no SSH, no guest network)."""

from __future__ import annotations

import base64
import contextlib
import errno
import io
import os
import shutil
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import typer

from meda_cli.context import api, handles_errors
from meda_cli.output import JsonOption, render
from meda_cli.untar import unpack
from meda_cli.validation import build
from meda_core.errors import InvalidRequest, MedaError, PayloadTooLarge
from meda_core.inputs.choices import MAX_EXEC_TIMEOUT, Archive

if TYPE_CHECKING:
    from meda_core.interface.feeds import EventFeed
    from meda_core.models import ExecRequest

app = typer.Typer()
CHUNK = 64 * 1024


def _request(
    argv: list[str], env: list[str], cwd: str | None, timeout: float | None, stdin: str | None
) -> ExecRequest:
    from meda_core.models import ExecRequest

    pairs = [item.partition("=") for item in env]
    if any(not sep for _, sep, _ in pairs):
        raise InvalidRequest("--env takes KEY=VALUE")
    if not argv:
        raise InvalidRequest("name the command after --: meda exec NAME -- CMD [ARGS...]")
    variables = {key: value for key, _, value in pairs}
    return build(ExecRequest, command=argv, env=variables, cwd=cwd, timeout=timeout, stdin=stdin)


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@handles_errors
def exec_command(
    ctx: typer.Context,
    name: str,
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE added to its environment"),
    cwd: str | None = typer.Option(None, "--cwd", help="Absolute directory to run it in"),
    timeout: float | None = typer.Option(
        None, "--timeout", min=0.001, max=MAX_EXEC_TIMEOUT, help="Seconds before it is killed"
    ),
    stdin: bool = typer.Option(False, "--stdin", "-i", help="Pass this command's input on"),
    as_json: bool = JsonOption,
) -> None:
    """Run CMD (after --) in a running VM through its guest agent, no SSH needed.

    Its output is streamed, its exit status passed through (128 + the signal that ended
    it); meda's own errors keep their exit codes."""
    if as_json:  # the short form: one result
        given = sys.stdin.read() if stdin else None
        result = api().exec_command(name, _request(ctx.args, env, cwd, timeout, given))
        render(result, True, lambda r: None)
        code = result.exit_code if result.exit_code is not None else 128 + (result.signal or 0)
        raise typer.Exit(code)
    request = _request(ctx.args, env, cwd, timeout, None if stdin else "")
    feed = api().exec_stream(name, request)
    try:
        code = _follow(feed, name, stdin)
    finally:
        feed.close()
    raise typer.Exit(code)


def _follow(feed: EventFeed, name: str, stdin: bool) -> int:
    """Write the command's output as it comes; its exit status."""
    outputs = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    for event in feed:
        kind, data = event.get("event"), event.get("data") or {}
        if kind in outputs:
            outputs[kind].write(base64.b64decode(data["data"]))
            outputs[kind].flush()
        elif kind == "started" and stdin:
            threading.Thread(target=_pump_stdin, args=(name, data["session"]), daemon=True).start()
        elif kind == "exit":
            return int(data["exit_code"]) if data["exit_code"] is not None else 128 + data["signal"]
        elif kind == "error":
            raise MedaError.from_body(data, 500)
    raise MedaError("the server ended the command's stream without its exit status")


def _pump_stdin(name: str, session: str) -> None:
    """This process's input to the command in one streamed post (one request, not one
    per chunk: rate limits count requests), then end-of-file."""
    with contextlib.suppress(MedaError):  # the command ended or stopped reading: its exit says
        api().exec_stdin(name, session, _stdin_chunks(), eof=True)


def _stdin_chunks() -> Iterator[bytes]:
    source = sys.stdin.buffer
    read = getattr(source, "read1", source.read)  # read1: what is there, not a whole CHUNK
    while data := read(CHUNK):
        yield data


# ---- cp ----


def _remote(spec: str) -> tuple[str, str] | None:
    """``NAME:/PATH`` as (name, path); None for a local path (``./a:b`` for one with a colon)."""
    import re

    from meda_core.inputs.names import VM_NAME_PATTERN

    name, sep, path = spec.partition(":")
    if sep and re.fullmatch(VM_NAME_PATTERN, name):
        if not path.startswith("/"):
            raise InvalidRequest(f"{spec}: the guest path must be absolute (NAME:/PATH)")
        return name, path
    return None


@app.command()
@handles_errors
def cp(
    source: str = typer.Argument(..., help="A local path, or NAME:/PATH in a guest"),
    dest: str = typer.Argument(..., help="A local path, or NAME:/PATH in a guest"),
    as_json: bool = JsonOption,
) -> None:
    """Copy a file or directory (as tar) into or out of a running VM, no SSH needed.

    meda cp SRC NAME:/DST, or meda cp NAME:/SRC DST; a trailing / on a guest DST keeps
    the file's or directory's name; a guest directory lands in a new one (DST, or
    DST/<name> when DST is a directory)."""
    into, out_of = _remote(dest), _remote(source)
    if (into is None) == (out_of is None):
        raise InvalidRequest("one of SRC and DST must be NAME:/PATH in a guest, the other local")
    if into is not None:
        result = _upload(Path(source), *into)
        render(
            result, as_json, lambda r: typer.echo(f"{r.path}: {r.size} bytes, sha256 {r.sha256}")
        )
    elif out_of is not None:
        _download(*out_of, Path(dest))


def _upload(source: Path, name: str, path: str) -> Any:
    if not source.exists():
        raise InvalidRequest(f"{source}: no such file or directory")
    if path.endswith("/"):  # into that guest directory, under its own name (as cp)
        path += source.resolve().name
    if source.is_dir():
        with tempfile.TemporaryFile() as packed:
            with tarfile.open(fileobj=packed, mode="w") as tar:
                tar.add(source, arcname=".")
            packed.seek(0)
            return api().put_file(name, path, _read(packed), archive=Archive.TAR)
    mode = f"{source.stat().st_mode & 0o7777:o}"
    with source.open("rb") as file:
        return api().put_file(name, path, _read(file), mode=mode)


def _read(file: Any) -> Iterator[bytes]:
    while data := file.read(CHUNK):
        yield data


def _download_tree(name: str, path: str, dest: Path, limit: int) -> None:
    """The guest directory ``path``, as a tar, into a new directory: ``dest``, or
    ``dest/<its name>`` when ``dest`` is a directory (as ``cp -r``). Never into one that
    exists: what the guest sends cannot replace a file of the host's."""
    target = dest / (PurePosixPath(path).name or "root") if dest.is_dir() else dest
    if target.exists() or target.is_symlink():
        raise InvalidRequest(f"{target} exists: meda cp makes a new directory for {path}")
    unpacked = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        tar = io.BufferedReader(_Chunks(api().get_file(name, path, archive=Archive.TAR)), CHUNK)
        unpack(tar, unpacked, limit)
        os.chmod(unpacked, 0o755)  # mkdtemp made it 0700
        os.rename(unpacked, target)  # fails if something took the name meanwhile
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)


def _download(name: str, path: str, dest: Path) -> None:
    limit = _download_cap()
    try:
        chunks = api().get_file(name, path)
    except InvalidRequest as error:
        if error.details.get("errno") != errno.EISDIR:
            raise
        _download_tree(name, path, dest, limit)
        return
    if dest.is_dir():
        dest = dest / (Path(path).name or "file")
    # mkstemp: a new 0600 file (O_EXCL), never one planted under the name we would use
    fd, partial = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as file:
            size = 0
            for data in chunks:
                size += len(data)
                if size > limit:
                    raise PayloadTooLarge(
                        f"{name}:{path} is over {limit} bytes (MEDA_FILE_MAX_BYTES)", limit=limit
                    )
                file.write(data)
        os.replace(partial, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


def _download_cap() -> int:
    """The most bytes a download may bring: this host's MEDA_FILE_MAX_BYTES (a guest's
    file, or tar, that never ends must not fill the disk)."""
    from meda_core.settings import Settings

    return Settings().file_max_bytes


class _Chunks(io.RawIOBase):
    """An iterator of byte chunks read as a file."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._pending = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size], self._pending = self._pending[:size], self._pending[size:]
        return size
