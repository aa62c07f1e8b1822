#!/usr/bin/env bash
# One-command set-up for a fresh Debian 12 machine, run as root by `make test/demo/bench`:
# installs the missing system packages, makes .venv and installs storagectl with its test
# extras. Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(
  # build libvirt-python from PyPI
  libvirt-dev pkg-config gcc python3-dev python3-venv
  # the real components
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  qemu-utils qemu-system-x86 qemu-block-extra
  lvm2 ceph-mon ceph-osd ceph-common
  # the guest kernel for the LVM tier (virtme-ng boots it under TCG)
  linux-image-amd64 busybox-static
  # helpers used by the tests (prometheus: its promtool checks contrib/prometheus)
  util-linux procps systemd prometheus
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -q >/dev/null
  # A daemon's package (prometheus: only its promtool is wanted) starts its service from
  # postinst. Without systemd running, invoke-rc.d would start it through its init script,
  # outside any service manager, and leave it running: a policy-rc.d denying every start
  # (exit 101), only for this install and only if the machine has none of its own.
  policy=/usr/sbin/policy-rc.d
  denied=
  if [ ! -d /run/systemd/system ] && [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# scripts/setup.sh (storagectl): no service starts while it installs\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    denied=1
    trap 'rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$denied" ]; then
    rm -f "$policy"
    trap - EXIT
  fi
  if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    # Installed here for promtool only: its server is not to run now nor at boot.
    if [ -d /run/systemd/system ]; then
      systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    else
      update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
  fi
fi

PYTHON=${PYTHON:-python3}
"$PYTHON" - <<'PY' || { echo "setup: Python >= 3.11 needed (PYTHON=$PYTHON)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

# Python dependencies come from a committed lock (scripts/lock.sh, `make lock`), installed
# with hash checking; the build tools are installed first from the same lock and used
# without build isolation, so nothing unpinned is fetched (libvirt-python is an sdist).
LOCK=${STORAGECTL_LOCK:-requirements-test.lock}
stamp=.venv/.storagectl-installed
want=$(cat pyproject.toml "$LOCK" | sha1sum | cut -d' ' -f1)
npkg=$(grep -cE '^[A-Za-z0-9._-]+==' "$LOCK")
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing $LOCK into .venv ($npkg pinned packages, hashes checked) and storagectl"
  mkdir -p build
  "$PYTHON" scripts/lockpick.py "$LOCK" setuptools wheel > build/setup-build-tools.txt
  .venv/bin/pip install -q --require-hashes --no-deps -r build/setup-build-tools.txt
  .venv/bin/pip install -q --require-hashes --no-deps --no-build-isolation -r "$LOCK"
  .venv/bin/pip install -q --no-deps --no-build-isolation -e .
  .venv/bin/pip check >/dev/null || { .venv/bin/pip check >&2; exit 1; }
  echo "$want" > "$stamp"
else
  echo "setup: .venv matches $LOCK ($npkg pinned packages)"
fi
