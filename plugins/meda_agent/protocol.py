"""The meda agent's wire format: length-prefixed frames multiplexed by session id.

A frame is a 9-byte header, ``>IBI`` (body length, type, session), then the body. Both
sides cap a body at :data:`MAX_BODY`; the host checks every length the guest claims
before it reads (or allocates) the bytes behind it. docs/agent.md describes each type.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from meda_core.plugin import BackendError, InvalidRequest

VERSION = 2
MAGIC = b"MEDA"
HEADER = struct.Struct(">IBI")
MAX_BODY = 256 * 1024
#: Output and file data travel in chunks of at most this.
CHUNK = 64 * 1024
#: Stdin bytes the host may send a command before the guest acknowledges them.
STDIN_WINDOW = 256 * 1024
#: Output and file bytes the guest may send a session before the host grants more.
OUTPUT_WINDOW = 1024 * 1024
NONCE_SIZE = 16
#: How many bytes of a stale stream the host skips looking for its hello's answer.
MAX_STALE = 4 * 1024 * 1024


class Type(IntEnum):
    # host -> guest
    HELLO = 1
    PING = 3
    EXEC = 5
    STDIN = 6
    STDIN_EOF = 7
    KILL = 8
    READ = 9
    WRITE = 10
    WRITE_DATA = 11
    WRITE_END = 12
    IDENTITY = 13
    OUTPUT_ACK = 14
    # guest -> host
    READY = 2
    PONG = 4
    STDOUT = 20
    STDERR = 21
    EXIT = 22
    FILE_DATA = 23
    FILE_END = 24
    WRITE_DONE = 25
    STDIN_ACK = 26
    ERROR = 27
    STARTED = 28


FROM_GUEST = frozenset(
    {
        Type.READY,
        Type.PONG,
        Type.STDOUT,
        Type.STDERR,
        Type.EXIT,
        Type.FILE_DATA,
        Type.FILE_END,
        Type.WRITE_DONE,
        Type.STDIN_ACK,
        Type.ERROR,
        Type.STARTED,
    }
)
GUEST_TYPES = frozenset(int(t) for t in FROM_GUEST)
#: The exact body length of fixed-size guest frames.
FIXED = {
    Type.READY: 24,
    Type.EXIT: 8,
    Type.FILE_END: 8,
    Type.WRITE_DONE: 8,
    Type.STDIN_ACK: 4,
    Type.STARTED: 0,
}
#: Guest frames that use up the session's output window.
DATA = frozenset({Type.STDOUT, Type.STDERR, Type.FILE_DATA})
NO_VALUE = 0xFFFFFFFF


@dataclass(frozen=True)
class Frame:
    type: Type
    session: int
    body: bytes = b""


def encode(type: Type, session: int, body: bytes = b"") -> bytes:
    """One frame; InvalidRequest when the body is over the cap."""
    if len(body) > MAX_BODY:
        raise InvalidRequest(f"an agent frame is at most {MAX_BODY} bytes, this one {len(body)}")
    return HEADER.pack(len(body), type, session) + body


def hello(nonce: bytes) -> bytes:
    return encode(Type.HELLO, 0, MAGIC + struct.pack(">I", VERSION) + nonce)


def exec_body(argv: tuple[str, ...], env: tuple[tuple[str, str], ...], cwd: str | None) -> bytes:
    """``u16 argc, u16 envc``, then NUL-terminated cwd (empty: none), argv, ``K=V`` env."""
    if not argv:
        raise InvalidRequest("a command needs at least a program")
    if len(argv) > 0xFFFF or len(env) > 0xFFFF:
        raise InvalidRequest("too many arguments or environment variables")
    words = [cwd or "", *argv, *(f"{k}={v}" for k, v in env)]
    for key, _ in env:
        if not key or "=" in key:
            raise InvalidRequest(f"bad environment variable name {key!r}")
    if any("\0" in word for word in words):
        raise InvalidRequest("a command, its environment and directory cannot contain NUL")
    return struct.pack(">HH", len(argv), len(env)) + b"".join(w.encode() + b"\0" for w in words)


def write_body(path: str, mode: int, owner: tuple[int, int] | None) -> bytes:
    uid, gid = owner or (0, 0)
    if not 0 <= mode <= 0o7777:
        raise InvalidRequest(f"mode {oct(mode)} is not a file mode")
    if not (0 <= uid < NO_VALUE and 0 <= gid < NO_VALUE):
        raise InvalidRequest(f"owner {uid}:{gid} is out of range")
    return struct.pack(">IIIB", mode, uid, gid, owner is not None) + path.encode()


def decode_exit(body: bytes) -> tuple[int | None, int | None]:
    code, signal = struct.unpack(">II", body)
    return (None if code == NO_VALUE else code), (None if signal == NO_VALUE else signal)


def decode_error(body: bytes) -> tuple[int, str]:
    if len(body) < 4:
        raise BackendError("the guest agent sent an error frame too short to read")
    (errno,) = struct.unpack(">I", body[:4])
    return errno, body[4:].decode(errors="replace")


class Decoder:
    """Cuts a byte stream from a guest into frames, trusting none of it."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame]:
        """The whole frames ``data`` completes, in order; BackendError at the first bad
        one (the good frames before it are yielded first)."""
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            length, kind, session = HEADER.unpack_from(self._buffer)
            check(length, kind)
            if len(self._buffer) < HEADER.size + length:
                return
            body = bytes(self._buffer[HEADER.size : HEADER.size + length])
            del self._buffer[: HEADER.size + length]
            yield Frame(Type(kind), session, body)


def check(length: int, kind: int) -> None:
    """BackendError if a guest frame's header is not one the protocol allows."""
    if length > MAX_BODY:
        raise BackendError(f"the guest agent sent a frame of {length} bytes (cap {MAX_BODY})")
    if kind not in GUEST_TYPES:
        raise BackendError(f"the guest agent sent a frame of unknown type {kind}")
    fixed = FIXED.get(Type(kind))
    if fixed is not None and length != fixed:
        raise BackendError(f"the guest agent sent a {Type(kind).name} frame of {length} bytes")
