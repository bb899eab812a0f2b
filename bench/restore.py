#!/usr/bin/env python3
"""Cold boot vs warm ``run`` of the Debian image, to ready (its SSH server answers).

In one run: the warm template is built (timed: the first run answers at once, its
template builds in the background until its SSH server answers), then rounds of a cold
``run --cold`` and a warm ``run`` alternate, each timed from the call to the SSH banner;
then 5 warm runs at once, timed until all five answer. Prints medians, p95s and their
ratio and writes JSON (default bench/results/restore.json). Runs in a network namespace
it makes.

    .venv/bin/python bench/restore.py [--rounds 3] [--clones 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from results_file import write_result  # beside this script

from meda_core.facade import Meda
from meda_core.images import build as imagebuild
from meda_core.interface.calls import LocalApi
from meda_core.models import Image, RunRequest
from meda_core.settings import Settings
from meda_core.testing import namespaces
from meda_core.vms import readiness

READY_TIMEOUT = 600.0
SHAPE = {"memory": "1G", "cpus": 1, "disk": "8G"}


def debian_image() -> Image:
    home = Path(os.environ.get("MEDA_TEST_DEBIAN_HOME", Path.home() / ".cache/meda/debian"))
    cache = Meda(Settings(home=home))
    return imagebuild.build(
        cache.images, "debian:12", imagebuild.BuildSpec(), home / "cache" / "work", print
    )


def timed_run(api: LocalApi, ns: str, name: str, cold: bool) -> float:
    """Seconds from the run call until the VM's SSH server answers."""
    started = time.monotonic()
    result = api.run_image(RunRequest(image="debian:12", name=name, cold=cold, **SHAPE))
    assert result.vm is not None and result.vm.ip is not None
    readiness.wait_until_ready(ns, result.vm.ip, 22, READY_TIMEOUT)
    return time.monotonic() - started


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clones", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results/restore.json")
    args = parser.parse_args()

    image = debian_image()
    ns = namespaces.create("meda-bench")
    home = Path(tempfile.mkdtemp(prefix="meda-bench-"))
    meda = Meda(Settings(home=home, netns=ns, stop_timeout=5))
    api = LocalApi(meda)
    try:
        meda.images.import_files(
            "debian:12",
            disk=image.disk,
            kernel=image.kernel,
            initrd=image.initrd,
            cmdline=image.cmdline,
            ready_port=imagebuild.READY_PORT,
        )
        started = time.monotonic()
        timed_run(api, ns, "first", cold=False)
        [build] = [o for o in meda.operations.list().operations if o.kind == "template"]
        built = meda.operations.wait(build.id, 2 * READY_TIMEOUT)
        assert built.state == "succeeded", built.error
        template_seconds = time.monotonic() - started
        print(f"first run and its template build: {template_seconds:.1f} s")
        api.delete_vm("first")

        cold: list[float] = []
        warm: list[float] = []
        for i in range(args.rounds):
            cold.append(timed_run(api, ns, f"cold-{i}", cold=True))
            api.delete_vm(f"cold-{i}")
            warm.append(timed_run(api, ns, f"warm-{i}", cold=False))
            api.delete_vm(f"warm-{i}")
            print(f"round {i + 1}: cold {cold[-1]:.2f} s, warm {warm[-1]:.2f} s")

        names = [f"many-{i}" for i in range(args.clones)]
        started = time.monotonic()
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(lambda n: timed_run(api, ns, n, cold=False), names))
        all_ready = time.monotonic() - started
        for name in names:
            api.delete_vm(name)
        print(f"{args.clones} warm runs at once: all answer SSH after {all_ready:.2f} s")
    finally:
        meda.vms.delete_all()
        namespaces.destroy(ns)
        shutil.rmtree(home, ignore_errors=True)

    result = {
        "image": "debian:12",
        "shape": SHAPE,
        "rounds": args.rounds,
        "template_build_seconds": round(template_seconds, 2),
        "cold_seconds": [round(v, 2) for v in cold],
        "warm_seconds": [round(v, 2) for v in warm],
        "cold_median": round(statistics.median(cold), 2),
        "cold_p95": round(p95(cold), 2),
        "warm_median": round(statistics.median(warm), 2),
        "warm_p95": round(p95(warm), 2),
        "ratio_median": round(statistics.median(cold) / statistics.median(warm), 1),
        "clones_at_once": args.clones,
        "clones_all_ready_seconds": round(all_ready, 2),
    }
    print(
        f"cold median {result['cold_median']} s (p95 {result['cold_p95']}), warm median "
        f"{result['warm_median']} s (p95 {result['warm_p95']}): {result['ratio_median']}x"
    )
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
