"""The NoCloud seed of a VM: an ISO 9660 image labelled ``cidata``, built with pycdlib."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pycdlib
import yaml

from meda_core.backends.roles import GuestAddressing
from meda_core.host.files import atomic_file
from meda_core.host.private import create_private
from meda_core.models import VM


def meta_data(vm: VM) -> str:
    return str(yaml.safe_dump({"instance-id": vm.uuid, "local-hostname": vm.name}, sort_keys=False))


def network_config(vm: VM, addressing: GuestAddressing | None) -> str | None:
    """network-config v2 for the VM's NIC, matched by MAC (Debian's ifupdown renderer
    mangles name globs), addressed as its network backend says; None for no NIC, or when
    the backend leaves the guest to its own defaults.

    The static default route is ``gateway4``: ifupdown renders it as ``gateway`` (``ip
    route``), where a route's ``via`` becomes ``post-up route add``, which needs net-tools.
    The name servers are applied by resolvconf (``dns-nameservers``).
    """
    if vm.mac is None or addressing is None:
        return None
    nic: dict[str, object] = {"match": {"macaddress": vm.mac}, "set-name": "eth0"}
    if addressing.address is not None:
        nic["addresses"] = [addressing.address]
        if addressing.gateway is not None:
            nic["gateway4"] = addressing.gateway
        if addressing.nameservers:
            nic["nameservers"] = {"addresses": list(addressing.nameservers)}
    else:
        nic["dhcp4"] = True
    return str(yaml.safe_dump({"version": 2, "ethernets": {"eth0": nic}}, sort_keys=False))


def write_seed(dest: Path, files: dict[str, str]) -> None:
    """Write an ISO with ``files`` at its root, atomically (a running VM never sees a torn one)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name, text in files.items():
        data = text.encode()
        iso_name = name.upper().replace("-", "_")[:8] + ".;1"
        iso.add_fp(
            io.BytesIO(data), len(data), f"/{iso_name}", rr_name=name, joliet_path=f"/{name}"
        )
    with atomic_file(dest) as tmp, os.fdopen(create_private(tmp), "wb") as out:
        iso.write_fp(out)  # private: user-data may hold secrets
    iso.close()
