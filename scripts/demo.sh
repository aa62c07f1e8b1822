#!/usr/bin/env bash
# `make demo`: build a sandbox legacy compute node (files, Ceph RBD and LVM instances)
# and run storagectl's main flow on it: inspect -> persist -> show -> audit.
# Everything lives under build/demo and is torn down at the end (set KEEP=1 to keep).
set -uo pipefail
cd "$(dirname "$0")/.."
DEMO=${DEMO_DIR:-$PWD/build/demo}
SECRET=5f7c1a2e-3b4d-4e6f-8a9b-0c1d2e3f4a5b  # the libvirt secret of the demo's Ceph user
PY=.venv/bin/python
SC=.venv/bin/storagectl
export STORAGECTL_LOG_FILE=$DEMO/storagectl.log

cleanup() {
  [ "${KEEP:-0}" = 1 ] && { echo "kept $DEMO"; return; }
  $PY -m tests.env.ceph stop "$DEMO/ceph" >/dev/null 2>&1 || true
  $PY -m tests.env.lvm destroy "$DEMO/lvm" >/dev/null 2>&1 || true
  for u in $(cat "$DEMO/defined" 2>/dev/null); do
    virsh -q -c qemu:///system destroy "$u" >/dev/null 2>&1 || true
    virsh -q -c qemu:///system undefine "$u" >/dev/null 2>&1 || true
  done
  virsh -q -c qemu:///system secret-undefine "$SECRET" >/dev/null 2>&1 || true
  # Only a daemon this demo started itself: one that was already running (an operator's,
  # or a test run's) is left alone.
  if [ "${LIBVIRTD_STARTED:-0}" = 1 ]; then
    $PY -m tests.env.libvirtd stop >/dev/null 2>&1 || true
  fi
  rm -rf "$DEMO"
}
trap cleanup EXIT
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; local rc=$?; echo "(exit status $rc)"; return $rc; }

rm -rf "$DEMO"; mkdir -p "$DEMO"

step "A single-node Ceph cluster on 127.0.0.1 (one mon, one memstore OSD)"
CEPH_CONF=$($PY -m tests.env.ceph start "$DEMO/ceph") || { echo "ceph did not start"; exit 1; }
echo "ceph conf: $CEPH_CONF"

step "A volume group on a loop device (metadata only: this host has no device-mapper)"
LVM_JSON=$($PY -m tests.env.lvm create "$DEMO/lvm") || { echo "lvm set-up failed"; exit 1; }
VG=$(echo "$LVM_JSON" | $PY -c 'import json,sys; print(json.load(sys.stdin)["vg"])')
# lvm2 reads this lvm.conf (activation off, only our loop device) - storagectl's own
# command lines stay exactly what they are on a real compute host.
export LVM_SYSTEM_DIR=$(echo "$LVM_JSON" | $PY -c 'import json,sys; print(json.load(sys.stdin)["system_dir"])')
echo "volume group: $VG (LVM_SYSTEM_DIR=$LVM_SYSTEM_DIR)"

step "A sandbox legacy compute node: qcow2-on-base, flat, LVM and RBD instances"
# Small disks: the demo VG is 1 GiB of a sparse loop file.
$SC sandbox create "$DEMO/node" --instances 8 --with lvm,rbd --volume-group "$VG" \
  --rbd-pool vms --ceph-conf "$CEPH_CONF" --rbd-user admin --flavors m1.tiny,m1.swap \
  --root-size 64M || { echo "sandbox creation failed"; exit 1; }
G=(-c "test://$DEMO/node/node.xml" --nova-conf "$DEMO/node/etc/nova/nova.conf"
   --lock-path "$DEMO/locks")

step "A guest writes a qcow2 header naming /etc/shadow into its raw disk (CVE-2016-2140)"
VICTIM=$($PY - "$DEMO/node" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1] + "/sandbox.json"))
for inst in m["instances"]:
    for d in inst["disks"]:
        if d["backend"] == "file" and d["format"] == "raw" and d["name"] == "disk":
            print(inst["uuid"]); sys.exit(0)
PYEOF
)
qemu-img create -q -f qcow2 -b /etc/shadow -F raw "$DEMO/evil.qcow2" 1G
dd if="$DEMO/evil.qcow2" of="$DEMO/node/instances/$VICTIM/disk" bs=64k count=1 conv=notrunc status=none
echo "instance $VICTIM"

step "inspect: every instance's layout, inferred once from the domain XML and metadata"
show $SC "${G[@]}" inspect

step "inspect -o json (first instance)"
$SC "${G[@]}" inspect -o json | $PY -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"hosts": d["hosts"], "instances": d["instances"][:1]}, indent=2))'

step "persist --all: the attacked instance is refused, the others get storage.yaml"
show $SC "${G[@]}" persist --all

step "show: the record of one instance"
FIRST=$($SC "${G[@]}" inspect -o json | $PY -c 'import json,sys; print([i["uuid"] for i in json.load(sys.stdin)["instances"] if i["source"]=="metadata"][0])')
show $SC "${G[@]}" show "$FIRST"

step "what if nova.conf said images_type=lvm? (--assume: nova.conf is not edited)"
echo "\$ storagectl ... audit --assume '[libvirt] images_type=lvm' -o json"
$SC "${G[@]}" audit --assume '[libvirt] images_type=lvm' -o json > "$DEMO/assumed.json"
$PY - "$DEMO/assumed.json" <<'PYEOF'
import json, sys
bad = sorted({f["instance"] for f in json.load(open(sys.argv[1]))["findings"] if f["code"] == "nova-would-misread"})
print(f"{len(bad)} instance(s) Nova would misread after that flip:", *bad, sep="\n  ")
PYEOF

step "flip the host to images_type=lvm, use_cow_images=False: records keep every layout"
sed -i 's/^use_cow_images.*/use_cow_images = False/; s/^images_type.*/images_type = lvm/' "$DEMO/node/etc/nova/nova.conf"
$SC "${G[@]}" inspect -o json > "$DEMO/after-flip.json"
$PY - "$DEMO/after-flip.json" <<'PYEOF'
import json, sys
for i in json.load(open(sys.argv[1]))["instances"]:
    disks = " ".join(f"{d['name']}={d['backend']}/{d['format']}" for d in i["disks"])
    misread = sum(f["code"] == "nova-would-misread" for f in i["findings"])
    print(i["uuid"], i["source"], disks, f"(Nova would misread {misread} disk(s))" if misread else "")
PYEOF
echo "(the records are right - and Nova, which never reads them, would misread every"
echo " disk that is not an LV: that is what migrate and a host conversion are for)"

step "audit: the cron job (exit 2: a critical finding), with a Prometheus textfile"
show $SC "${G[@]}" audit --prometheus "$DEMO/storagectl.prom"
grep -v '^#' "$DEMO/storagectl.prom" | grep -v ' 0$'

step "migrate: move a shut-off qcow2 instance to a flat raw file, on a real libvirtd"
started=$($PY -m tests.env.libvirtd start) || { echo "libvirtd did not start"; exit 1; }
echo "$started"
case "$started" in "libvirtd started"*) LIBVIRTD_STARTED=1 ;; esac
$SC sandbox create "$DEMO/node2" --instances 2 --seed 7 \
  --define qemu:///system --domain-type qemu >/dev/null || { echo "sandbox failed"; exit 1; }
M=(-c qemu:///system --nova-conf "$DEMO/node2/etc/nova/nova.conf" --lock-path "$DEMO/locks")
$PY -c 'import json,sys; print("\n".join(i["uuid"] for i in json.load(open(sys.argv[1]))["instances"]))' \
  "$DEMO/node2/sandbox.json" > "$DEMO/defined"
MOVE=$($PY -c 'import json,sys; print([i["uuid"] for i in json.load(open(sys.argv[1]))["instances"] if i["kind"]=="qcow2"][0])' "$DEMO/node2/sandbox.json")
show $SC "${M[@]}" persist $(cat "$DEMO/defined")
echo "(this host's nova.conf says images_type=default with use_cow_images: Nova opens every"
echo " disk as qcow2, so a move to flat alone is what the next hard reboot undoes)"
show $SC "${M[@]}" migrate "$MOVE" --to flat --dry-run
FLAT=(--assume '[libvirt] images_type=flat')
show $SC "${M[@]}" migrate "$MOVE" --to flat "${FLAT[@]}" --dry-run || exit 1
show $SC "${M[@]}" migrate "$MOVE" --to flat "${FLAT[@]}" --yes || exit 1
show $SC "${M[@]}" audit --assume '[libvirt] images_type=flat'
sed -i 's/^images_type.*/images_type = flat/' "$DEMO/node2/etc/nova/nova.conf"
echo "(nova.conf now says images_type = flat)"
show $SC "${M[@]}" audit || exit 1
show $SC "${M[@]}" migrate --delete-retained "$MOVE" --yes || exit 1

step "convert the host to Ceph RBD: both instances, then nova.conf (pool, user and secret from it)"
echo "(one of them runs: it moves live - libvirt block copy, then the pivot - while the"
echo " other, shut off, moves offline; the running guest needs its Ceph key in a libvirt"
echo " secret, as on every Nova host with RBD disks)"
$PY - "$SECRET" "$DEMO/ceph/ceph.client.admin.keyring" <<'PYEOF' || { echo "secret failed"; exit 1; }
import base64, re, sys, libvirt
conn = libvirt.open("qemu:///system")
xml = (f"<secret ephemeral='no' private='no'><uuid>{sys.argv[1]}</uuid>"
       "<usage type='ceph'><name>client.admin storagectl-demo</name></usage></secret>")
key = re.search(r"key\s*=\s*(\S+)", open(sys.argv[2]).read()).group(1)
conn.secretDefineXML(xml).setValue(base64.b64decode(key))
PYEOF
show virsh -q -c qemu:///system start "$MOVE" || exit 1
sed -i "/^\[libvirt\]/a images_rbd_pool = vms\nimages_rbd_ceph_conf = $CEPH_CONF\nrbd_user = admin\nrbd_secret_uuid = $SECRET" \
  "$DEMO/node2/etc/nova/nova.conf"
TO_RBD=$($PY -c 'import json,sys; print([i["uuid"] for i in json.load(open(sys.argv[1]))["instances"] if i["kind"]=="flat"][0])' "$DEMO/node2/sandbox.json")
echo "(one instance alone: the plan says which others must move before nova.conf can say rbd)"
show $SC "${M[@]}" migrate "$TO_RBD" --to rbd --assume '[libvirt] images_type=rbd' --dry-run || exit 1
echo "(the whole host: migrate --all plans every instance and names the nova.conf lines)"
show $SC "${M[@]}" migrate --all --to rbd --dry-run || exit 1
show $SC "${M[@]}" migrate --all --to rbd --parallel 2 --yes || exit 1
sed -i 's/^images_type.*/images_type = rbd/' "$DEMO/node2/etc/nova/nova.conf"
echo "(nova.conf now says images_type = rbd)"
show $SC "${M[@]}" show "$TO_RBD"
virsh -q -c qemu:///system dumpxml "$TO_RBD" | sed -n '/<disk/,/<\/disk>/p' | head -12
echo "(the first sandbox's RBD instances share pool vms but are not defined in this libvirtd,"
echo " and this host has no directory of theirs: another host's instances, so audit counts"
echo " them as unowned-volumes (info); with --complete - every host of the pool scanned at"
echo " once - they would be orphan-volume warnings)"
show $SC "${M[@]}" audit

step "done: every step above ran (exit statuses shown are storagectl's own)"
