#!/usr/bin/env python3
"""Pull and push of a 1 GiB image through meda vs ``skopeo copy`` and the physical limits.

The disk mixes incompressible data, text-like data and zeros (40/30/30 %, in 4 MiB
stretches, like a real disk image). skopeo copies the same bytes as a one-layer OCI image
from and to an OCI layout. Each round starts a fresh local registry (docker-registry on
loopback) and, alternating which goes first, times: meda's push and skopeo's; meda's pull
and skopeo's; fetching the meda artifact's own blobs with 4 parallel ``curl``s into files
beside the others (the registry's fetch limit); writing the disk's bytes with ``dd bs=4M
conv=sparse,fsync`` (the disk's write limit, matching meda: zero stretches stay holes and
the file is fsynced once; skopeo fsyncs its files too). meda pulls into a second, empty
MEDA_HOME made afresh each round, as a user pulls an image they do not have (the pushing
home holds the same disk already: a pull there would only drop a duplicate); skopeo pulls
into a fresh layout. Inputs are warm in the page cache for every side; caches are never
dropped. Medians over the rounds; the ratios are what count (the machine may be shared).
A first round is run and not counted: on this machine both tools' pushes ran 30-100 %
slower in the first round than in the third, whichever went first.

    .venv/bin/python bench/registry.py [--size-mib 1024] [--rounds 3] [--warmup 1] [--quick]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from results_file import write_result  # beside this script

from meda_core.facade import Meda
from meda_core.inputs.references import parse_reference
from meda_core.settings import Settings
from meda_core.testing.registry import local_registry
from meda_oci.client import RegistryClient
from meda_oci.formats import CHUNK_TYPE

MiB = 1024 * 1024
STRETCH = 4 * MiB
PATTERN = ("random", "random", "text", "zero", "random", "text", "zero", "random", "text", "zero")
PULL_LIMIT = 1.2  # meda's pull may take at most this times the slower physical limit


def make_disk(path: Path, size_mib: int) -> dict[str, int]:
    """40 % random, 30 % text-like, 30 % zeros, in 4 MiB stretches; MiB of each."""
    words = b"the quick brown fox jumps over the lazy dog; meda boots micro-vms quickly\n"
    text = (words * (STRETCH // len(words) + 1))[:STRETCH]
    kinds = {"random": 0, "text": 0, "zero": 0}
    with path.open("wb") as f:
        for block in range(size_mib * MiB // STRETCH):
            kind = PATTERN[block % len(PATTERN)]
            kinds[kind] += STRETCH // MiB
            if kind == "random":
                f.write(os.urandom(STRETCH))
            elif kind == "text":
                f.write(text)
            else:
                f.seek(STRETCH, os.SEEK_CUR)
        f.truncate(size_mib * MiB)
    return kinds


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` takes, started with nothing left to write back: what the step
    before it wrote (a registry's blobs, dd's gigabyte) is flushed first, not charged to
    whichever measure comes next."""
    os.sync()
    started = time.monotonic()
    action()
    return time.monotonic() - started


def oci_layout(disk: Path, layout: Path) -> None:
    """A one-layer OCI image layout holding ``disk`` as its layer, for skopeo."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    digest = hashlib.sha256()
    with disk.open("rb") as f:
        while chunk := f.read(16 * MiB):
            digest.update(chunk)
    layer = digest.hexdigest()
    shutil.copyfile(disk, blobs / layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer}"]},
        }
    ).encode()
    config_digest = _blob(blobs, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{config_digest}",
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{layer}",
                    "size": disk.stat().st_size,
                }
            ],
        }
    ).encode()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{_blob(blobs, manifest)}",
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "bench"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))


def _blob(blobs: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return digest


def skopeo(*args: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", *args], check=True)


def curl4(registry: str, repository: str, folder: Path) -> float:
    """Seconds to fetch the artifact's chunk blobs with 4 parallel ``curl``s into files."""
    client = RegistryClient(parse_reference(f"{registry}/{repository}:v1"))
    manifest = json.loads(client.manifest("v1")[0])
    urls = [
        f"http://{registry}/v2/{repository}/blobs/{layer['digest']}"
        for layer in manifest["layers"]
        if layer["mediaType"] == CHUNK_TYPE
    ]
    folder.mkdir()
    argvs = []
    for worker in range(4):
        argv = ["curl", "-sf"]
        for index in range(worker, len(urls), 4):
            argv += ["-o", str(folder / str(index)), urls[index]]
        argvs.append(argv)
    os.sync()
    started = time.monotonic()
    processes = [subprocess.Popen(argv) for argv in argvs if len(argv) > 2]
    if any(p.wait() != 0 for p in processes):
        raise RuntimeError("curl failed")
    elapsed = time.monotonic() - started
    shutil.rmtree(folder)
    return elapsed


def dd(disk: Path, target: Path) -> float:
    """Seconds to write the disk's bytes as meda does: zeros as holes, one fsync."""
    argv = ["dd", f"if={disk}", f"of={target}", "bs=4M", "conv=sparse,fsync", "status=none"]
    elapsed = timed(lambda: subprocess.run(argv, check=True))
    target.unlink()
    return elapsed


def one_round(meda: Meda, work: Path, disk: Path, number: int) -> dict[str, float]:
    """Every measure once, against a fresh registry; seconds of each."""
    seconds: dict[str, float] = {}
    with local_registry(work / f"registry-{number}") as registry:
        meda_ref, skopeo_ref = f"{registry}/bench/meda:v1", f"docker://{registry}/bench/skopeo:v1"
        pushes = {
            "meda_push": lambda: meda.images.push("bench", meda_ref),
            "skopeo_push": lambda: skopeo(
                "--dest-tls-verify=false", f"oci:{work / 'layout'}:bench", skopeo_ref
            ),
        }
        pulled, puller = work / "pulled", Meda(Settings(home=work / "pull-home"))
        puller.images.list()  # the state store is made before the timed pull
        pulls = {
            "meda_pull": lambda: puller.images.pull(meda_ref),
            "skopeo_pull": lambda: skopeo("--src-tls-verify=false", skopeo_ref, f"oci:{pulled}:b"),
        }
        for group in (pushes, pulls):
            order = sorted(group, reverse=number % 2 == 1)  # alternate who goes first
            for name in order:
                seconds[name] = timed(group[name])
        puller.close()
        shutil.rmtree(work / "pull-home")
        shutil.rmtree(pulled)
        seconds["curl4"] = curl4(registry, "bench/meda", work / "fetched")
        seconds["dd"] = dd(disk, work / "dd.raw")
    shutil.rmtree(work / f"registry-{number}")
    return seconds


def row(
    measure: str, meda: float, yardstick: float, unit: str, goal: str, met: bool
) -> dict[str, Any]:
    ratio = meda / yardstick
    return {
        "measure": measure,
        "meda": round(meda, 3),
        "yardstick": round(yardstick, 3),
        "unit": unit,
        "ratio": round(ratio, 3),
        "goal": goal,
        "met": met,
    }


def rows(median: dict[str, float], size_mib: int) -> list[dict[str, Any]]:
    mb = size_mib * MiB / 1e6
    limit = max(median["curl4"], median["dd"])
    pull, push = (
        median["skopeo_pull"] / median["meda_pull"],
        median["skopeo_push"] / median["meda_push"],
    )
    return [
        row(
            f"pull of a {size_mib} MiB image vs skopeo copy",
            mb / median["meda_pull"],
            mb / median["skopeo_pull"],
            "MB/s",
            ">= 1.0x skopeo",
            pull >= 1.0,
        ),
        row(
            "pull time vs the slower of 4 parallel curls of its blobs and dd of its bytes",
            median["meda_pull"],
            limit,
            "s",
            f"<= {PULL_LIMIT}x",
            median["meda_pull"] <= PULL_LIMIT * limit,
        ),
        row(
            f"push of a {size_mib} MiB image vs skopeo copy",
            mb / median["meda_push"],
            mb / median["skopeo_push"],
            "MB/s",
            ">= 1.0x skopeo",
            push >= 1.0,
        ),
    ]


def report(result: dict[str, Any]) -> None:
    print(f"{'measure':<78} {'meda':>9} {'yardstick':>9} {'unit':>5} {'ratio':>6}  goal")
    for r in result["rows"]:
        print(
            f"{r['measure']:<78} {r['meda']:>9.2f} {r['yardstick']:>9.2f} {r['unit']:>5} "
            f"{r['ratio']:>6.2f}  {r['goal']} {'met' if r['met'] else 'NOT met'}"
        )
    print("median seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in result["median_s"].items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="rounds run first, not counted")
    parser.add_argument("--quick", action="store_true", help="64 MiB, 1 round: shows it works")
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results/registry.json"
    )
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.rounds, args.warmup = 64, 1, 0
    missing = [
        tool for tool in ("skopeo", "docker-registry", "curl", "dd") if not shutil.which(tool)
    ]
    if missing:
        print(f"missing: {', '.join(missing)} (scripts/setup.sh installs them)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="meda-bench-registry-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        disk = work / "disk.raw"
        kinds = make_disk(disk, args.size_mib)
        oci_layout(disk, work / "layout")
        meda = Meda(Settings(home=work / "home"))
        meda.images.import_files("bench", disk=disk)
        warmup = [one_round(meda, work, disk, n) for n in range(args.warmup)]
        rounds = [one_round(meda, work, disk, args.warmup + n) for n in range(args.rounds)]
    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    result = {
        "bench": "registry",
        "quick": args.quick,
        "rows": rows(median, args.size_mib),
        "size_mib": args.size_mib,
        "content_mib": kinds,
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "rounds_s": [{k: round(v, 3) for k, v in r.items()} for r in rounds],
        "warmup_s": [{k: round(v, 3) for k, v in r.items()} for r in warmup],
    }
    report(result)
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
