#!/usr/bin/env python3
"""Every benchmark of the speed goals, one after another: one table, one JSON, the README's figures.

Runs each benchmark below as its own process (so one's server or cache cannot help the
next), collects the rows each writes (measure, meda, yardstick, ratio, goal, met), prints
them as one table and writes bench/results/summary.json. ``--readme`` also rewrites the
table between the ``bench:start`` and ``bench:end`` markers of README.md, so the figures
there are always what this command measured.

    .venv/bin/python bench/all.py [--quick] [--only reads,registry] [--readme]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from results_file import write_result  # beside this script
from signals import unwind_on_sigterm

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

#: The benchmarks of the speed goals, in the order the README lists them.
BENCHMARKS = ("reads", "cli_startup", "boot_overhead", "registry")


def run_benchmark(name: str, quick: bool, results: Path) -> dict[str, Any]:
    """Run one benchmark script and return the JSON it wrote (its exit status included)."""
    output = results / f"{name}.json"
    output.unlink(missing_ok=True)
    argv = [sys.executable, str(HERE / f"{name}.py"), "--json", str(output)]
    started = time.monotonic()
    status = subprocess.run(argv + (["--quick"] if quick else []), check=False).returncode
    result: dict[str, Any] = {"bench": name, "rows": []}
    if output.exists():
        result = json.loads(output.read_text())
    result["exit_status"] = status
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def figure(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}"


def table(results: list[dict[str, Any]]) -> str:
    """The rows of every benchmark as one Markdown table."""
    lines = [
        "| measure | meda | yardstick | ratio | goal | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        for row in result["rows"]:
            ratio = row.get("ratio")
            lines.append(
                f"| {row['measure']} | {figure(row['meda'], row['unit'])} "
                f"| {figure(row.get('yardstick'), row['unit'])} "
                f"| {'—' if ratio is None else f'{ratio:.2f}x'} | {row['goal']} "
                f"| {'yes' if row['met'] else 'no'} |"
            )
    return "\n".join(lines)


def rewrite_readme(text: str) -> None:
    readme = README.read_text()
    before, marker, rest = readme.partition(START)
    _, end, after = rest.partition(END)
    if not marker or not end:
        raise SystemExit(f"README.md has no {START} … {END} block")
    README.write_text(f"{before}{START}\n{text}\n{END}{after}")
    print(f"rewrote the figures in {README}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's short run")
    parser.add_argument("--only", help="comma-separated benchmark names", default="")
    parser.add_argument("--readme", action="store_true", help="rewrite README's figures")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "summary.json")
    args = parser.parse_args()
    unwind_on_sigterm()
    names = [name for name in args.only.split(",") if name] or list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    results = [run_benchmark(name, args.quick, args.json.parent) for name in names]
    rendered = table(results)
    print(rendered)
    machine = {"cpus": len(os.sched_getaffinity(0)), "kernel": platform.release()}
    write_result(args.json, {"quick": args.quick, "machine": machine, "benchmarks": results})
    failed = [result["bench"] for result in results if result["exit_status"] != 0]
    if args.readme and not args.quick and not failed:
        rewrite_readme(rendered)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
