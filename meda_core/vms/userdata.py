"""user_data: content or an allowed path in, one cloud-init user-data document out."""

from __future__ import annotations

from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import yaml

from meda_core.errors import InvalidRequest

MAX_BYTES = 1024 * 1024
SCRIPT_PREFIXES = ("#!", "#cloud-boothook", "#include", "Content-Type:")
MEDA_USER = "meda"


def resolve(value: str, allowed_dirs: list[Path]) -> str:
    """user_data content: ``value`` itself, or the file it names inside an allowed dir."""
    if "\n" not in value.strip() and value.strip().startswith(("/", "~", "./", "../")):
        return _read_allowed(Path(value.strip()).expanduser(), allowed_dirs)
    return check_content(value)


def _read_allowed(path: Path, allowed_dirs: list[Path]) -> str:
    real = path.resolve()
    if not any(real.is_relative_to(d.resolve()) for d in allowed_dirs):
        raise InvalidRequest(
            f"user_data path {path} is not in a directory the operator allows "
            "(MEDA_USER_DATA_DIRS); send the user data's content instead",
            user_data=str(path),
        )
    if not real.is_file():
        raise InvalidRequest(f"user_data file {path} does not exist", user_data=str(path))
    if real.stat().st_size > MAX_BYTES:
        raise InvalidRequest(f"user_data file {path} is larger than {MAX_BYTES} bytes")
    return check_content(real.read_text())


def check_content(content: str) -> str:
    if len(content.encode()) > MAX_BYTES:
        raise InvalidRequest(f"user_data is larger than {MAX_BYTES} bytes")
    if content.startswith("#cloud-config"):
        try:
            parsed = yaml.safe_load(content)
        except yaml.YAMLError as exc:
            raise InvalidRequest(f"user_data is not valid YAML: {exc}") from None
        if parsed is not None and not isinstance(parsed, dict):
            raise InvalidRequest("user_data cloud-config must be a mapping")
        return content
    if content.startswith(SCRIPT_PREFIXES):
        return content
    raise InvalidRequest(
        "user_data must be cloud-config (starting '#cloud-config') or a script "
        "(starting '#!'), or a path in an allowed directory",
    )


def meda_user(public_key: str) -> dict[str, Any]:
    return {
        "name": MEDA_USER,
        "groups": ["sudo"],
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "shell": "/bin/bash",
        "lock_passwd": True,
        "ssh_authorized_keys": [public_key],
    }


def render(user_data: str | None, public_key: str) -> str:
    """The user-data the guest gets: meda's user and key, plus what the user sent."""
    if user_data is not None and user_data.startswith("#cloud-config"):
        config = yaml.safe_load(user_data) or {}
    else:
        config = {}
    users = config.get("users", ["default"])
    config["users"] = [*(users if isinstance(users, list) else [users]), meda_user(public_key)]
    config.setdefault("ssh_pwauth", False)
    config.setdefault("manage_etc_hosts", True)  # so sudo and friends resolve the hostname
    document = "#cloud-config\n" + str(yaml.safe_dump(config, sort_keys=False))
    if user_data is None or user_data.startswith("#cloud-config"):
        return document
    parts = MIMEMultipart()  # a script (or other part type) beside meda's cloud-config
    parts.attach(MIMEText(document, "cloud-config"))
    parts.attach(MIMEText(user_data, "x-shellscript" if user_data.startswith("#!") else "plain"))
    return str(parts.as_string())
