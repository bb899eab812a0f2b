"""Names of VMs and images: validated before they ever touch a path."""

from __future__ import annotations

import re

from meda_core.errors import InvalidRequest

VM_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
IMAGE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
TAG_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"
IMAGE_REF_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$"

#: What each pattern asks for, in words: one text for the API, the CLI and every check.
VM_NAME_RULE = "use 1-63 lowercase letters, digits and '-', starting with a letter or digit"
IMAGE_NAME_RULE = "use lowercase letters, digits, '.', '_' and '-'"
RULES = {
    VM_NAME_PATTERN: ("VM name", VM_NAME_RULE),
    IMAGE_NAME_PATTERN: ("image name", IMAGE_NAME_RULE),
    TAG_PATTERN: ("image tag", "use letters, digits, '.', '_' and '-', at most 128"),
    IMAGE_REF_PATTERN: ("image reference", f"NAME[:TAG]; in NAME {IMAGE_NAME_RULE}"),
}

_VM_NAME = re.compile(VM_NAME_PATTERN)
_IMAGE_NAME = re.compile(IMAGE_NAME_PATTERN)
_TAG = re.compile(TAG_PATTERN)


def check_vm_name(name: str) -> str:
    """``name`` if it is a valid VM name, else :class:`InvalidRequest`."""
    if not _VM_NAME.fullmatch(name):
        raise InvalidRequest(
            f"invalid VM name '{name}': {VM_NAME_RULE}",
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
            f"invalid image name '{name}': {IMAGE_NAME_RULE}",
            name=name,
            pattern=IMAGE_NAME_PATTERN,
        )
    if not _TAG.fullmatch(tag):
        raise InvalidRequest(f"invalid image tag '{tag}'", tag=tag, pattern=TAG_PATTERN)
    return name, tag
