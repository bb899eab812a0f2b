"""Human sizes such as "2G", "512M" or "20G": parsing and canonical formatting."""

from __future__ import annotations

import re
from collections.abc import Callable

from meda_core.errors import InvalidRequest

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
#: What a size looks like (also published in the API's schema).
SIZE_PATTERN = r"^\s*(\d{1,15})\s*([KkMmGgTt]?)(?:[Ii]?[Bb])?\s*$"
_SIZE = re.compile(SIZE_PATTERN)


def parse_size(text: str) -> int:
    """Bytes in ``text`` ("2G", "512M", "1024K", "20GiB"); powers of 1024."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise InvalidRequest(
            f"invalid size '{text}': use a whole number with K, M, G or T, e.g. '2G'",
            value=text,
        )
    number, unit = match.groups()
    return int(number) * _UNITS[unit.upper()]


def at_least(minimum: int, what: str) -> Callable[[str], str]:
    """A validator: a size of at least ``minimum`` bytes, in its canonical form."""

    def check(text: str) -> str:
        size = parse_size(text)
        if size < minimum:
            raise InvalidRequest(
                f"{what} {text.strip()} is too small: at least {format_size(minimum)}",
                value=text,
                minimum=format_size(minimum),
            )
        return format_size(size)

    return check


def format_size(size: int) -> str:
    """The shortest exact form of ``size`` bytes ("2G", "1536M"), else a rounded one."""
    for unit in ("T", "G", "M", "K"):
        if size >= _UNITS[unit] and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    for unit in ("T", "G", "M", "K"):
        if size >= _UNITS[unit]:
            return f"{size / _UNITS[unit]:.1f}{unit}"
    return f"{size}B"
