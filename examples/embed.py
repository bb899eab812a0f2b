"""Embedding meda: drive VMs from your own Python program, no server needed.

MEDA_DEFAULT_IMAGE=testguest python examples/embed.py
"""

from __future__ import annotations

from meda_core.app import Meda
from meda_core.errors import MedaError
from meda_core.models import CreateVMRequest
from meda_core.views import vm_info


def main() -> None:
    meda = Meda()  # settings from MEDA_* variables, plugins from entry points
    try:
        vm = meda.vms.create(CreateVMRequest(name="embedded", memory="512M", force=True))
        vm = meda.vms.start(vm.name)
        print(vm_info(vm).model_dump_json(indent=2))
    except MedaError as error:
        print(f"{error.code}: {error.message}")
        raise SystemExit(error.exit_code) from error
    finally:
        if any(v.name == "embedded" for v in meda.vms.list()):
            meda.vms.delete("embedded")


if __name__ == "__main__":
    main()
