"""Each benchmark of the speed goals runs (briefly) and writes rows of the documented shape.

A quick run measures too little to judge a goal; it shows the script works, so the
figures the README quotes can be made again by anyone with ``bench/all.py``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
ROW_KEYS = {"measure", "meda", "yardstick", "unit", "ratio", "goal", "met"}


@pytest.mark.vm  # the boot benchmark boots the test guest
def test_all_runs_every_benchmark_quickly_and_tables_their_rows(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    argv = [sys.executable, str(BENCH / "all.py"), "--quick", "--json", str(summary)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(summary.read_text())
    names = [benchmark["bench"] for benchmark in result["benchmarks"]]
    assert names == ["reads", "cli_startup", "boot_overhead", "registry"]
    for benchmark in result["benchmarks"]:
        assert benchmark["quick"] is True
        assert benchmark["rows"], f"{benchmark['bench']} wrote no rows"
        for row in benchmark["rows"]:
            assert set(row) >= ROW_KEYS, row
            assert math.isfinite(row["meda"])  # an added time may be below zero
            assert isinstance(row["met"], bool)
            assert row["measure"] in done.stdout


def test_an_unknown_benchmark_is_refused() -> None:
    argv = [sys.executable, str(BENCH / "all.py"), "--only", "nope"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "unknown benchmark(s): nope" in done.stderr


def test_the_readme_block_is_rewritten_between_its_markers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import all as bench_all

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\nrest\n")
    monkeypatch.setattr(bench_all, "README", readme)
    rows = [{"measure": "m", "meda": 2.0, "yardstick": 1.0, "unit": "s", "ratio": 2.0}]
    rows[0] |= {"goal": "<= 1.1x", "met": False}
    bench_all.rewrite_readme(bench_all.table([{"rows": rows}]))
    text = readme.read_text()
    assert "old" not in text
    assert "| m | 2 s | 1 s | 2.00x | <= 1.1x | no |" in text
    assert text.startswith("intro\n") and text.endswith("<!-- bench:end -->\nrest\n")
