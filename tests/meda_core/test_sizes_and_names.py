from __future__ import annotations

import pytest

from meda_core.errors import InvalidRequest
from meda_core.inputs.names import check_vm_name, parse_image_ref
from meda_core.inputs.sizes import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [("2G", 2 << 30), ("512M", 512 << 20), ("1024k", 1 << 20), ("20GiB", 20 << 30), ("7", 7)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "2X", "-1G", "1.5G", "G", "2G; rm -rf /"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_size(text)


def test_format_size_round_trips() -> None:
    assert format_size(2 << 30) == "2G"
    assert format_size(1536 << 20) == "1536M"
    assert format_size(1500) == "1.5K"


@pytest.mark.parametrize("name", ["a", "vm-1", "x" * 63, "0abc"])
def test_valid_vm_names(name: str) -> None:
    assert check_vm_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "A", "a_b", "../x", "a/b", "x" * 64, "a b", "vm\n"])
def test_invalid_vm_names(name: str) -> None:
    with pytest.raises(InvalidRequest):
        check_vm_name(name)


def test_image_refs() -> None:
    assert parse_image_ref("debian") == ("debian", "latest")
    assert parse_image_ref("debian:12") == ("debian", "12")
    for bad in ("../etc", "a/b", "Debian", "x:../y"):
        with pytest.raises(InvalidRequest):
            parse_image_ref(bad)
