#!/usr/bin/env python3
"""Cold-process start-up of the ``meda`` CLI against Python's and Typer's own floors.

In one run, alternating, each a new process (its files warm in the page cache, as a
user's second command finds them): the floors ``python -c pass``, ``python -c 'import
typer'`` and a one-command Typer app's ``--help`` (Rich help, as meda's); then ``meda
--help``, ``meda --version`` and ``meda list --json`` against a ``meda serve`` this script
starts in a temporary MEDA_HOME (user-mode network, no VM: what is timed is the CLI's
start and one request). Prints medians in ms (wall, and the CPU each process used) and
writes JSON (default bench/results/cli_startup.json).

    .venv/bin/python bench/cli_startup.py [--runs 20] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from results_file import print_rows, row, write_result  # beside this script
from signals import unwind_on_sigterm

from meda_core.testing.host import free_port

HELP_GOAL_MS = 300.0
#: The least a Typer CLI with Rich help (as meda's) pays for ``--help``: one command.
TYPER_HELP = (
    "import typer\n"
    "app = typer.Typer(add_completion=False)\n"
    "@app.callback()\n"
    "def main(url: str = typer.Option('', help='A server')) -> None:\n"
    "    'A CLI.'\n"
    "@app.command()\n"
    "def create(name: str) -> None:\n"
    "    'Create.'\n"
    "app(prog_name='typer-app')\n"
)
MEDA = str(Path(sys.executable).with_name("meda"))


@contextlib.contextmanager
def server(home: Path) -> Iterator[str]:
    """``meda serve`` on a free loopback port, answering; stopped after."""
    port = free_port()
    env = {**os.environ, "MEDA_HOME": str(home), "MEDA_NETWORK": "user"}
    env.pop("MEDA_API_TOKEN", None)
    log = (home.parent / "serve.log").open("ab")
    process = subprocess.Popen(
        [MEDA, "serve", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((home.parent / "serve.log").read_text())
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def commands(url: str) -> dict[str, list[str]]:
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import typer'": [sys.executable, "-c", "import typer"],
        "a 1-command typer app --help": [sys.executable, "-c", TYPER_HELP, "--help"],
        "meda --help": [MEDA, "--help"],
        "meda --version": [MEDA, "--version"],
        "meda list --json": [MEDA, "--url", url, "list", "--json"],
    }


def time_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Milliseconds from spawning ``argv`` to its exit (a success), and the CPU (user and
    system) it used: on a shared machine the CPU time says what waiting for a core hid."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    errors = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = (time.perf_counter() - start) * 1000
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stderr.close()
    if process.returncode != 0:
        raise SystemExit(f"{argv} failed ({process.returncode}): {errors.decode()}")
    return wall, (usage.ru_utime + usage.ru_stime) * 1000


Samples = dict[str, list[tuple[float, float]]]


def measure(runs: int, url: str, env: dict[str, str]) -> Samples:
    """``runs`` timings of each command, interleaved round by round, after one warm-up."""
    argvs = commands(url)
    for argv in argvs.values():
        time_once(argv, env)
    samples: Samples = {name: [] for name in argvs}
    for _ in range(runs):
        for name, argv in argvs.items():
            samples[name].append(time_once(argv, env))
    return samples


def rows(medians: dict[str, float]) -> list[dict[str, object]]:
    typer_floor = medians["python -c 'import typer'"]
    help_floor = medians["a 1-command typer app --help"]
    help_ms, list_ms = medians["meda --help"], medians["meda list --json"]
    help_goal = f"<= {HELP_GOAL_MS:.0f} ms median"
    return [
        row(
            "`meda --help`, cold process",
            help_ms,
            typer_floor,
            "ms",
            help_goal,
            help_ms <= HELP_GOAL_MS,
            typer_help_floor=round(help_floor, 1),
            ratio_to_typer_help=round(help_ms / help_floor, 2),
        ),
        row(
            "`meda list --json` against a running server, cold process",
            list_ms,
            typer_floor,
            "ms",
            "reported (no goal)",
            True,
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 runs: shows the script works")
    default_json = Path(__file__).parent / "results/cli_startup.json"
    parser.add_argument("--json", type=Path, default=default_json)
    args = parser.parse_args()
    unwind_on_sigterm()
    runs = 3 if args.quick else args.runs
    with tempfile.TemporaryDirectory(prefix="meda-bench-cli-") as tmp:
        home = Path(tmp) / "home"
        env = {**os.environ, "MEDA_HOME": str(home), "COLUMNS": "100"}
        for name in ("MEDA_URL", "MEDA_API_TOKEN", "MEDA_API_TOKEN_FILE"):
            env.pop(name, None)
        with server(home) as url:
            samples = measure(runs, url, env)
    medians = {name: statistics.median(w for w, _ in values) for name, values in samples.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in samples.items()}
    print(f"{'command':<30} {'median ms':>10} {'min ms':>8} {'cpu ms':>8}")
    for name, values in samples.items():
        fastest = min(w for w, _ in values)
        print(f"{name:<30} {medians[name]:>10.1f} {fastest:>8.1f} {cpu[name]:>8.1f}")
    result = {"bench": "cli_startup", "quick": args.quick, "runs": runs, "rows": rows(medians)}
    result["medians_ms"] = {name: round(value, 1) for name, value in medians.items()}
    result["cpu_medians_ms"] = {name: round(value, 1) for name, value in cpu.items()}
    result["samples_ms"] = {name: [round(w, 1) for w, _ in v] for name, v in samples.items()}
    print_rows(result["rows"])
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
