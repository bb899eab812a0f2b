#!/usr/bin/env bash
# meda's main job, end to end: set up, start `meda serve`, and through the REST API create a
# VM, start it, watch its guest boot and take an address by DHCP, forward a port to it,
# stop it and delete it. meda's network (bridge, taps, dnsmasq, nftables) lives in a
# network namespace made for the demo and deleted after it. Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export MEDA_HOME=${MEDA_HOME:-$PWD/.meda-demo}
export MEDA_DEFAULT_IMAGE=testguest
export MEDA_NETNS=meda-demo-$$
port=${MEDA_PORT:-7777}
api="http://127.0.0.1:$port/api/v1"

echo "==> building the test guest (Debian cloud kernel + busybox initramfs) and importing it"
.venv/bin/python -m meda_core.testing.guest --import testguest >/dev/null

echo "==> network namespace $MEDA_NETNS for meda's network"
ip netns add "$MEDA_NETNS"
echo "==> meda serve on 127.0.0.1:$port"
.venv/bin/meda serve --port "$port" --log-level warning &
server=$!
finish() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    .venv/bin/meda delete api-test >/dev/null 2>&1 || true  # only if the demo failed midway
    ip netns delete "$MEDA_NETNS"
}
trap finish EXIT
for _ in $(seq 100); do curl -sf "$api/health" >/dev/null && break; sleep 0.1; done

call() {  # METHOD PATH [JSON]: print the request, the status and the body
    local method=$1 path=$2 body=${3:-}
    echo "--> $method $path ${body}"
    local args=(-s -w '\n%{http_code}' -X "$method" "$api$path")
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' -d "$body")
    local out; out=$(curl "${args[@]}")
    echo "<-- ${out##*$'\n'} $(echo "${out%$'\n'*}" | jq -c . 2>/dev/null || echo "${out%$'\n'*}")"
}

call POST /vms '{"name": "api-test", "memory": "2G", "cpus": 4, "disk": "20G"}'
call POST /vms/api-test/start
console=$(curl -s "$api/vms/api-test" | jq -r .details.console_log)
echo "==> waiting for the guest's init (serial console: $console)"
for _ in $(seq 600); do grep -q MEDA-GUEST-BOOTED "$console" 2>/dev/null && break; sleep 0.1; done
grep -q MEDA-GUEST-BOOTED "$console" || { echo "guest did not boot" >&2; exit 1; }
echo "    guest says: $(grep MEDA-GUEST-BOOTED "$console")"
for _ in $(seq 600); do grep -q MEDA-GUEST-IP "$console" 2>/dev/null && break; sleep 0.1; done
echo "    guest says: $(grep MEDA-GUEST-IP "$console")"
call GET /vms/api-test/ip
call POST /vms/api-test/port-forward '{"host_port": 8080, "guest_port": 80}'
echo "==> HTTP to the forwarded port, from inside meda's namespace"
echo "    http://127.0.0.1:8080/ says: $(ip netns exec "$MEDA_NETNS" curl -s -m 10 http://127.0.0.1:8080/)"
call GET /vms/api-test
call GET /vms
call POST /vms/api-test/stop
call DELETE /vms/api-test
call GET /vms/api-test
echo "==> done: the VM was created, booted, reached, stopped and deleted through the API"
