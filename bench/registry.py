#!/usr/bin/env python3
"""Push and pull of a 1 GiB image through meda vs ``skopeo copy``, same registry, same run.

The disk mixes incompressible data, text-like data and zeros (like a real disk image).
skopeo copies the same bytes as a one-layer OCI image from and to an OCI layout. Prints
MB/s and the ratios, the disk's own write speed, and writes JSON
(default bench/results/registry.json).

    .venv/bin/python bench/registry.py [--size-mib 1024] [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import write_result  # beside this script

from meda_core.facade import Meda
from meda_core.settings import Settings
from meda_core.testing.registry import local_registry

MiB = 1024 * 1024


def make_disk(path: Path, size_mib: int) -> dict[str, int]:
    """40 % random, 30 % text-like, 30 % zeros, in 4 MiB stretches."""
    words = b"the quick brown fox jumps over the lazy dog; meda boots micro-vms quickly\n"
    text = (words * (4 * MiB // len(words) + 1))[: 4 * MiB]
    kinds = {"random": 0, "text": 0, "zero": 0}
    with path.open("wb") as f:
        for block in range(size_mib // 4):
            kind = (
                "random",
                "random",
                "text",
                "zero",
                "random",
                "text",
                "zero",
                "random",
                "text",
                "zero",
            )[block % 10]
            kinds[kind] += 4
            if kind == "random":
                f.write(os.urandom(4 * MiB))
            elif kind == "text":
                f.write(text)
            else:
                f.seek(4 * MiB, os.SEEK_CUR)
        f.truncate(size_mib * MiB)
    return kinds


def timed(action) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    action()
    return time.monotonic() - started


def write_speed(folder: Path, size_mib: int) -> float:
    """MB/s of writing ``size_mib`` to this disk with an fsync at the end."""
    target, block = folder / "speed", os.urandom(4 * MiB)
    started = time.monotonic()
    with target.open("wb") as f:
        for _ in range(size_mib // 4):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.monotonic() - started
    target.unlink()
    return size_mib * MiB / elapsed / 1e6


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
    (blobs / hashlib.sha256(config).hexdigest()).write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{hashlib.sha256(config).hexdigest()}",
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
    manifest_digest = hashlib.sha256(manifest).hexdigest()
    (blobs / manifest_digest).write_bytes(manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": f"sha256:{manifest_digest}",
                        "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": "bench"},
                    }
                ],
            }
        )
    )


def skopeo(*args: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", *args], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--json", type=Path, default=Path("bench/results/registry.json"))
    args = parser.parse_args()
    if shutil.which("skopeo") is None:
        print("skopeo is not installed (apt-get install skopeo)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="meda-bench-registry-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        disk = work / "disk.raw"
        kinds = make_disk(disk, args.size_mib)
        oci_layout(disk, work / "layout")
        meda = Meda(Settings(home=work / "home"))
        meda.images.import_files("bench", disk=disk)
        with local_registry(work / "registry") as registry:
            target = f"{registry}/bench/meda:v1"
            meda_push = timed(lambda: meda.images.push("bench", target))
            meda.images.remove("bench")
            meda_pull = timed(lambda: meda.images.pull(target))
            skopeo_push = timed(
                lambda: skopeo(
                    "--dest-tls-verify=false",
                    f"oci:{work / 'layout'}:bench",
                    f"docker://{registry}/bench/skopeo:v1",
                )
            )
            skopeo_pull = timed(
                lambda: skopeo(
                    "--src-tls-verify=false",
                    f"docker://{registry}/bench/skopeo:v1",
                    f"oci:{work / 'pulled'}:bench",
                )
            )
        disk_mbs = write_speed(work, args.size_mib)
    size_mb = args.size_mib * MiB / 1e6
    result = {
        "benchmark": "registry",
        "size_mib": args.size_mib,
        "content_mib": kinds,
        "meda_push_mb_s": round(size_mb / meda_push, 1),
        "skopeo_push_mb_s": round(size_mb / skopeo_push, 1),
        "meda_pull_mb_s": round(size_mb / meda_pull, 1),
        "skopeo_pull_mb_s": round(size_mb / skopeo_pull, 1),
        "push_ratio": round(skopeo_push / meda_push, 2),
        "pull_ratio": round(skopeo_pull / meda_pull, 2),
        "disk_write_mb_s": round(disk_mbs, 1),
        "pull_vs_disk": round(size_mb / meda_pull / disk_mbs, 2),
        "seconds": {
            "meda_push": meda_push,
            "meda_pull": meda_pull,
            "skopeo_push": skopeo_push,
            "skopeo_pull": skopeo_pull,
        },
    }
    print(
        f"push: meda {result['meda_push_mb_s']} MB/s, skopeo {result['skopeo_push_mb_s']} MB/s "
        f"({result['push_ratio']}x)\n"
        f"pull: meda {result['meda_pull_mb_s']} MB/s, skopeo {result['skopeo_pull_mb_s']} MB/s "
        f"({result['pull_ratio']}x); disk writes {result['disk_write_mb_s']} MB/s "
        f"(pull is {result['pull_vs_disk']:.0%} of it)"
    )
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
