"""Human sizes such as "2G", "512M" or "20G": parsing and canonical formatting."""

from __future__ import annotations

import re

from meda_core.errors import InvalidRequest

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


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


def format_size(size: int) -> str:
    """The shortest exact form of ``size`` bytes ("2G", "1536M"), else a rounded one."""
    for unit in ("T", "G", "M", "K"):
        if size >= _UNITS[unit] and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    for unit in ("T", "G", "M", "K"):
        if size >= _UNITS[unit]:
            return f"{size / _UNITS[unit]:.1f}{unit}"
    return f"{size}B"
