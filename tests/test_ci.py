"""What the test run tells CI: the slowest tests, and an id of its own for every
schemathesis case (so a failure names its operation)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_prints_the_slowest_tests() -> None:
    script = (ROOT / "scripts" / "test.sh").read_text().replace("\\\n", " ")
    commands = [
        shlex.split(line.partition("=(")[2].rstrip(")"))
        for line in script.splitlines()
        if line.startswith("pytest=(.venv/bin/python -m pytest")
    ]
    assert commands and all("--durations=25" in argv for argv in commands), commands


def test_every_schemathesis_operation_has_its_own_test_id() -> None:
    collected = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/meda_api/test_schema_fuzz.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    assert len(ids) >= 20, collected.stdout + collected.stderr
    assert len(set(ids)) == len(ids), "schemathesis cases share a test id"
    assert "test_every_operation_keeps_to_the_document[POST /api/v1/vms]" in "\n".join(ids)
