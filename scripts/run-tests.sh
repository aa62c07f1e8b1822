#!/usr/bin/env bash
# Runs every test tier, one pytest process per tier, then prints per-tier counts and a
# skip summary. Any failure, error or skip makes the run fail: on this kind of machine
# every real component is expected to be there, and a skip would hide a missing one.
#   scripts/run-tests.sh [TIER...]     tiers: install unit functional ansible libvirtd ceph lvm lvm_guest lvm_guest_live powerloss
set -uo pipefail
cd "$(dirname "$0")/.."
TIERS=("$@")
((${#TIERS[@]})) || TIERS=(install unit functional ansible libvirtd ceph lvm lvm_guest lvm_guest_live powerloss)
mkdir -p build/junit
rm -f build/junit/*.xml
export PYTHONDONTWRITEBYTECODE=1
status=0
for tier in "${TIERS[@]}"; do
  echo "=== tier: $tier"
  start=$(date +%s)
  if [ "$tier" = lvm_guest ] || [ "$tier" = lvm_guest_live ]; then
    # One virtme-ng guest boot (TCG) runs the whole tier; its junit lands in the out dir.
    rm -rf "build/$tier"
    PATH="$PWD/.venv/bin:$PATH" .venv/bin/python -m tests.env.vng run-tier \
      --vng-out "build/$tier" --vng-tests "tests/$tier"
    rc=$?
    cp "build/$tier/junit.xml" "build/junit/$tier.xml" 2>/dev/null
  else
    .venv/bin/python -m pytest "tests/$tier" -q -p no:cacheprovider --junitxml="build/junit/$tier.xml"
    rc=$?
  fi
  echo "=== tier $tier: exit $rc in $(( $(date +%s) - start ))s"
  if [ $rc = 5 ]; then
    echo "tier $tier collected no tests: that is a failure here" >&2
  fi
  [ $rc = 0 ] || status=1
done
.venv/bin/python scripts/test_summary.py build/junit "${TIERS[@]}" || status=1
exit $status
