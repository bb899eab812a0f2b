"""Embedding meda: drive a VM from your own Python program — no server, no CLI.

MEDA_DEFAULT_IMAGE=debian:12 python examples/embed.py
"""

from __future__ import annotations

from meda_core import CreateVMRequest, Meda, MedaError


def main() -> int:
    meda = Meda()  # settings from MEDA_* variables, backends from installed plugins
    try:
        meda.vms.create(CreateVMRequest(name="embedded", memory="256M", force=True))
        vm = meda.vms.start("embedded")
        print(
            f"started {vm.name}: pid {vm.runtime.pid if vm.runtime else '-'}, "
            f"accelerator {vm.runtime.accelerator if vm.runtime else '-'}"
        )
        vm = meda.vms.get("embedded")
        print(f"{vm.name} is {vm.state.value}, address {vm.ip or '-'}")
        meda.vms.stop("embedded", timeout=5)
        print(f"{vm.name} is {meda.vms.get('embedded').state.value}")
    except MedaError as error:
        print(f"{error.code}: {error.message}")
        return error.exit_code
    finally:
        if any(v.name == "embedded" for v in meda.vms.list()):
            meda.vms.delete("embedded")
    print("deleted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
