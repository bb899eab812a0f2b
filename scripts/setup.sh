#!/usr/bin/env bash
# Installs what meda needs on a Debian 12 host: QEMU and qemu-img, dnsmasq, nftables and
# iproute2 for the tap-bridge network, a static busybox (for the test guest), a C compiler
# and static libc (the guest agent), curl and jq;
# the unprivileged account QEMU runs as; then a virtualenv in .venv with meda and its test
# tools.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(qemu-system-x86 qemu-utils busybox-static curl ca-certificates jq
          dnsmasq-base nftables iproute2 util-linux docker-registry skopeo
          mmdebstrap e2fsprogs openssh-client)
packages+=(gcc libc6-dev)  # the guest agent: a static program built on this host
packages+=(wrk)  # bench/reads.py: the load tool, the same for meda and its yardstick
packages+=(chromium)  # tests: Swagger UI and ReDoc opened offline (test_docs_offline.py)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    echo "==> installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
# The test guest's kernel is fetched with `apt-get download`: apt must know the package.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
fi

# QEMU drops to this account once it has opened its files (MEDA_QEMU_USER=auto).
if [[ $(id -u) -eq 0 ]] && ! id -u meda-qemu >/dev/null 2>&1; then
    echo "==> adding the system account meda-qemu (QEMU runs as it)"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin meda-qemu
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    echo "==> creating .venv"
    "$python" -m venv .venv
fi
# Installed already from this very tree (an editable install, or this commit with these
# changes to tracked files; a file a user writes beside them does not count): installing
# again would only pull meda from under a server running from .venv.
tree=$( (git rev-parse HEAD && git status --porcelain --untracked-files=no) 2>/dev/null | sha256sum | cut -c1-16)
stamp=.venv/.meda-installed
if .venv/bin/pip show meda 2>/dev/null | grep -qx "Editable project location: $PWD"; then
    echo "==> meda is installed in .venv, editable from this tree"
elif [[ -f $stamp && $(cat "$stamp") == "$tree" ]] && git rev-parse HEAD >/dev/null 2>&1; then
    echo "==> meda is installed in .venv from this tree already"
else
    echo "==> installing meda into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q ".[test]"
    echo "$tree" > "$stamp"
fi
