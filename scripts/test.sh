#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs meda's whole test suite, then ruff and mypy.
#
# With no arguments the suite runs as two pytest processes side by side: the tests that
# boot real guests (marked `vm`) one at a time, and all the others with the guest tests
# whose waits allow sharing the machine (marked `alongside`), whose output is shown once
# they end. Arguments go to a single pytest run instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Short temporary paths: a VM's sockets (qmp.sock, agent.sock) live in its folder and must
# fit AF_UNIX's 108 bytes.
base=$(mktemp -d /tmp/meda-t.XXXXXX)
trap 'rm -rf "$base"' EXIT
pytest=(.venv/bin/python -m pytest -q -p no:cacheprovider --durations=25)

# pytest's exit code 5 (nothing collected) is a failure here.
checked() {
    local status=$1 what=$2
    if [[ $status -eq 5 ]]; then
        echo "pytest collected no $what: that is a failure here" >&2
        return 1
    fi
    return "$status"
}

echo "==> pytest"
set +e
if [[ $# -gt 0 ]]; then
    "${pytest[@]}" --basetemp "$base/t" "$@"
    checked $? tests
    status=$?
else
    # A background command of a script starts with SIGINT and SIGQUIT ignored, and so
    # would every process the tests start (a Python started so never raises
    # KeyboardInterrupt): the defaults are put back before pytest starts.
    .venv/bin/python -c 'import os, signal as s, sys
for n in (s.SIGINT, s.SIGQUIT, s.SIGPIPE, s.SIGXFSZ): s.signal(n, s.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])' "${pytest[@]}" --basetemp "$base/other" \
        -m "not vm or alongside" > "$base/other.log" 2>&1 &
    other=$!
    "${pytest[@]}" --basetemp "$base/vm" -m "vm and not alongside"
    checked $? "guest tests"
    vm_status=$?
    wait "$other"
    checked $? "other tests"
    other_status=$?
    echo "==> pytest: the tests that boot no guest (run alongside)"
    cat "$base/other.log"
    status=$((vm_status != 0 ? vm_status : other_status))
fi
set -e
[[ $status -eq 0 ]] || exit "$status"

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
