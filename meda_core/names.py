"""Names of VMs and images: validated before they ever touch a path."""

from __future__ import annotations

import re

from meda_core.errors import InvalidRequest

VM_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
IMAGE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
TAG_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"
IMAGE_REF_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$"

_VM_NAME = re.compile(VM_NAME_PATTERN)
_IMAGE_NAME = re.compile(IMAGE_NAME_PATTERN)
_TAG = re.compile(TAG_PATTERN)


def check_vm_name(name: str) -> str:
    """``name`` if it is a valid VM name, else :class:`InvalidRequest`."""
    if not _VM_NAME.fullmatch(name):
        raise InvalidRequest(
            f"invalid VM name '{name}': use 1-63 lowercase letters, digits and '-', "
            "starting with a letter or digit",
            name=name,
            pattern=VM_NAME_PATTERN,
        )
    return name


def parse_image_ref(ref: str) -> tuple[str, str]:
    """Split ``NAME[:TAG]`` (tag defaults to ``latest``) and validate both parts."""
    name, _, tag = ref.partition(":")
    tag = tag or "latest"
    if not _IMAGE_NAME.fullmatch(name) or ".." in name:
        raise InvalidRequest(
            f"invalid image name '{name}': use lowercase letters, digits, '.', '_' and '-'",
            name=name,
            pattern=IMAGE_NAME_PATTERN,
        )
    if not _TAG.fullmatch(tag):
        raise InvalidRequest(f"invalid image tag '{tag}'", tag=tag, pattern=TAG_PATTERN)
    return name, tag
