#!/usr/bin/env bash
# meda's main job, end to end, on a fresh Debian 12 machine:
#   set up (apt packages, .venv), build the Debian base image if missing (cached),
#   start `meda serve`, and through the REST API run a VM from that image with user_data
#   that starts a web server, forward a host port to it and fetch the page through the
#   forward; then say how to SSH in and how to clean up.
# meda's network lives in a namespace meda makes for it (MEDA_NETNS_CREATE) and deletes
# with its last VM. By default the demo cleans up after itself; KEEP=1 leaves the VM
# running for you to SSH into.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
port=${MEDA_PORT:-7777}
api="http://127.0.0.1:$port/api/v1"
# Another server on the port would get every request below: refuse before doing anything.
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "error: something already listens on 127.0.0.1:$port; stop it, or run the demo" \
         "on another port: MEDA_PORT=7788 bash scripts/demo.sh" >&2
    exit 1
fi
bash scripts/setup.sh

export MEDA_HOME=${MEDA_HOME:-$PWD/.meda-demo}
export MEDA_NETNS=${MEDA_NETNS:-meda-demo} MEDA_NETNS_CREATE=1
# The demo leaves the host's own network as it was: no uplink for its namespace (its guest
# needs no way out; MEDA_NETNS_UPLINK=1, the default, gives guests one), and the forward
# listens on the host's loopback only.
export MEDA_NETNS_UPLINK=${MEDA_NETNS_UPLINK:-0} MEDA_FORWARD_ADDRESS=${MEDA_FORWARD_ADDRESS:-127.0.0.1}
meda=.venv/bin/meda

echo "==> the Debian 12 base image (built from Debian's mirror the first time, then cached)"
$meda images build debian:12

echo "==> meda serve on 127.0.0.1:$port"
$meda serve --port "$port" --log-level warning &
server=$!
finish() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    if [[ ${KEEP:-0} != 1 ]]; then
        $meda delete web >/dev/null 2>&1 || true
        # The warm template run made (then the network and the namespace go too).
        for t in $($meda templates --json 2>/dev/null | jq -r '.templates[].name'); do
            $meda delete "$t" >/dev/null 2>&1 || true
        done
    fi
}
trap finish EXIT
# The server answering must be the one started here: its server.json names its process,
# and that process holds the port.
ours() {
    jq -e --argjson pid "$server" '.pid == $pid' "$MEDA_HOME/server.json" >/dev/null 2>&1 \
        && ss -Hltnp "sport = :$port" | grep -q "pid=$server," \
        && curl -sf "$api/health" >/dev/null
}
for _ in $(seq 300); do
    ours && break
    kill -0 "$server" 2>/dev/null || { echo "error: meda serve did not start" >&2; exit 1; }
    sleep 0.1
done
ours || { echo "error: the server on 127.0.0.1:$port is not the one this demo started" >&2
          exit 1; }

call() {  # METHOD PATH [JSON]: print the request, the status and the body
    local method=$1 path=$2 body=${3:-}
    echo "--> $method $path"
    local args=(-s -w '\n%{http_code}' -X "$method" "$api$path")
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' -d "$body")
    local out; out=$(curl "${args[@]}")
    echo "<-- ${out##*$'\n'} $(echo "${out%$'\n'*}" | jq -c . 2>/dev/null | cut -c1-240)"
}

$meda delete web >/dev/null 2>&1 || true  # a VM left by an earlier KEEP=1 run
user_data=$(cat <<'YAML'
#cloud-config
write_files:
  - path: /srv/www/index.html
    content: "<h1>Hello from a meda VM</h1>\n"
runcmd:
  - [sh, -c, "cd /srv/www && busybox httpd -p 8000"]
YAML
)
# The run answers once the VM has started. ready_port: the port that says this guest is
# ready; with it, meda builds a warm template in the background (boot until the port
# answers, snapshot), and later runs with the same image and resources clone it (about a
# second).
body=$(jq -n --arg ud "$user_data" '{image: "debian:12", name: "web", memory: "1G",
    cpus: 2, disk: "8G", user_data: $ud, ready_port: 8000}')
boot=$(date +%s)
call POST /images/run "$body"
call GET /vms/web/ip
ip=$(curl -s "$api/vms/web/ip" | jq -r .ip)
echo "==> waiting for the guest's web server at $ip:8000"
for _ in $(seq 1200); do
    ip netns exec "$MEDA_NETNS" curl -sf -m 2 "http://$ip:8000/" >/dev/null && break
    sleep 0.5
done
ip netns exec "$MEDA_NETNS" curl -sf -m 2 "http://$ip:8000/" >/dev/null \
    || { echo "the guest did not get ready" >&2; exit 1; }
echo "    guest ready $(( $(date +%s) - boot )) s after POST /images/run"
call POST /vms/web/port-forward '{"host_port": 8080, "guest_port": 8000}'
echo "==> the page, fetched on this host through the forward (127.0.0.1:8080):"
curl -s -m 10 http://127.0.0.1:8080/
call GET /vms

cat <<MSG
==> done in $(( $(date +%s) - started )) s.
    SSH in:    MEDA_HOME=$MEDA_HOME MEDA_NETNS=$MEDA_NETNS $meda ssh web
    Clean up:  MEDA_HOME=$MEDA_HOME MEDA_NETNS=$MEDA_NETNS $meda delete web
               (and its warm template: MEDA_HOME=$MEDA_HOME MEDA_NETNS=$MEDA_NETNS $meda templates,
                then the same with $meda delete tpl-…)
MSG
if [[ ${KEEP:-0} != 1 ]]; then
    echo "    (this run cleans up now; run with KEEP=1 to keep the VM for SSH)"
fi
