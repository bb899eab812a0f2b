"""VM labels (``{key: value}``) and the ``key=value`` filters that select by them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from meda_core.errors import InvalidRequest

#: A key: lowercase, digits and ``._/-``, starting and ending with a letter or digit.
LABEL_KEY_PATTERN = r"^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$"
LABEL_KEY_RULE = (
    "use 1-63 lowercase letters, digits, '.', '_', '/' and '-', starting and ending with a "
    "letter or digit"
)
#: A value: at most 128 of these characters (never ``=``, ``,`` or space, which filters and
#: metrics would have to quote).
LABEL_VALUE_PATTERN = r"^[A-Za-z0-9._:/@+-]{0,128}$"
LABEL_VALUE_RULE = "use at most 128 letters, digits and '.', '_', ':', '/', '@', '+', '-'"
MAX_LABELS = 32
#: Filters one request may give (``?label=`` repeated).
MAX_FILTERS = 16

_KEY = re.compile(LABEL_KEY_PATTERN)
_VALUE = re.compile(LABEL_VALUE_PATTERN)


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """``labels`` if every key and value is valid and there are few enough, else
    :class:`InvalidRequest` naming the first bad one."""
    if len(labels) > MAX_LABELS:
        raise InvalidRequest(
            f"at most {MAX_LABELS} labels per VM ({len(labels)} given)", limit=MAX_LABELS
        )
    for key, value in labels.items():
        _check_key(key)
        if not isinstance(value, str) or not _VALUE.fullmatch(value):
            raise InvalidRequest(
                f"invalid value of label '{key}': {LABEL_VALUE_RULE}",
                label=key,
                pattern=LABEL_VALUE_PATTERN,
            )
    return dict(labels)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidRequest(
            f"invalid label key {key!r}: {LABEL_KEY_RULE}", label=key, pattern=LABEL_KEY_PATTERN
        )


def parse_filters(filters: Iterable[str]) -> dict[str, str | None]:
    """``key=value`` (that value) or ``key`` (any value) filters, checked as labels are."""
    wanted: dict[str, str | None] = {}
    given = list(filters)
    if len(given) > MAX_FILTERS:
        raise InvalidRequest(f"at most {MAX_FILTERS} label filters", limit=MAX_FILTERS)
    for text in given:
        key, sign, value = text.partition("=")
        _check_key(key)
        if sign:
            check_labels({key: value})
        if key in wanted and wanted[key] != (value if sign else None):
            raise InvalidRequest(f"label '{key}' is filtered on twice, differently", label=key)
        wanted[key] = value if sign else None
    return wanted


def matches(labels: Mapping[str, str], wanted: Mapping[str, str | None]) -> bool:
    """Whether ``labels`` has every key of ``wanted``, with its value where one is given."""
    return all(
        key in labels and (value is None or labels[key] == value) for key, value in wanted.items()
    )
