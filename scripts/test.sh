#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs meda's whole test suite, then ruff and mypy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "==> pytest"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
[[ $status -eq 0 ]] || exit "$status"

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
