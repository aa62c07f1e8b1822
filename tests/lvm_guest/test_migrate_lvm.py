"""storagectl migrate to and from LVM, for real: active LVs, a libvirtd, inside the guest.

Runs in the virtme-ng guest tier (``python -m tests.env.vng run-tier``): the host has no
device-mapper. Instances are built by tests/migrate_support.py (a qcow2 or flat root) or
here (a Nova LVM root: a thick LV ``/dev/VG/<uuid>_disk`` as ``<disk type='block'>``),
persisted through the CLI, and migrated with the CLI in this process or, with the
test-only ``STORAGECTL_FAULT`` hook, in a fork that SIGKILLs itself at a step boundary.

Under TCG every command costs about ten times what it does on the host, so disks are
small and the kill matrix walks one instance back and forth (see
:func:`test_kill_at_every_boundary_qcow2_lvm_both_ways`).
"""

from __future__ import annotations

import json
import re
import signal
import uuid as uuidlib
from pathlib import Path

from storagectl.backends.lvm import LVM
from tests.env.libvirtd import minimal_domain_xml
from tests.env.lvm import LvmEnv
from tests.migrate_support import (
    CLEAN_INSTANCE_DIR,
    STEPS,
    MiB,
    Node,
    dir_names,
    disk_element,
    guest_sha,
    leftovers,
    make_instance,
    refused,
    sh,
    snapshot,
    without_disk,
)

SIZE_MIB = 32  # a whole number of 4 MiB extents: the LV is exactly the disk
DATA_MIB = 3


# -- helpers ----------------------------------------------------------------------


def lv_path(vg: LvmEnv, uuid: str, disk: str = "disk") -> str:
    return f"/dev/{vg.vg}/{LVM.volume_name(uuid, disk)}"


def instance_lvs(vg: LvmEnv, uuid: str) -> set[str]:
    """Every LV of the instance in the VG, hidden ones (thin pool parts) included."""
    out = vg.run("lvs", "-a", "--noheadings", "-o", "lv_name", vg.vg).stdout
    names = {line.strip().strip("[]") for line in out.splitlines()}
    return {n for n in names if n.startswith(uuid)}


def vda(node: Node, uuid: str) -> tuple[str, str, str]:
    """``(disk type, source file or dev, driver type)`` of vda in the persistent XML."""
    el = disk_element(node, uuid, "vda")
    kind = re.search(r"<disk type='([^']+)'", el).group(1)
    source = re.search(r"<source (?:file|dev)='([^']+)'", el).group(1)
    fmt = re.search(r"<driver [^>]*type='([^']+)'", el).group(1)
    return kind, source, fmt


def guest_view(node: Node, uuid: str, scratch: Path) -> str:
    """sha256 of what vda shows the guest, wherever the persistent XML points it."""
    _, source, fmt = vda(node, uuid)
    return guest_sha(source, fmt, scratch)


def lvm_instance(node: Node, vg: LvmEnv, *, size_mib: int = SIZE_MIB) -> str:
    """A persisted, shut-off instance whose root is a Nova LVM disk (thick LV)."""
    uuid = str(uuidlib.uuid4())
    d = node.instances / uuid
    d.mkdir()
    path = lv_path(vg, uuid)
    vg.run("lvcreate", "--yes", "-L", f"{size_mib}m", "-n", LVM.volume_name(uuid, "disk"), vg.vg)
    sh("qemu-io", "-f", "raw", "-c", f"write -P 7 1M {DATA_MIB}M", path)
    (d / "disk.info").write_text(json.dumps({path: "raw"}))
    xml = minimal_domain_xml(
        f"storagectl-mig-{uuid[:8]}", uuid, [(path, "raw", "vda")], node.libvirtd.domain_type
    )
    node.libvirtd.define(xml)
    assert vda(node, uuid) == ("block", path, "raw")
    res = node.run("persist", uuid)
    assert res.returncode == 0, res.stdout + res.stderr
    return uuid


def convert_lines(node: Node) -> list[str]:
    """The ``qemu-img convert`` command lines storagectl ran (the Runner logs each one as
    ``ran: ARGV -> exit N (Ts)``)."""
    log = node.root / "storagectl.log"
    return [line for line in log.read_text().splitlines() if "ran: qemu-img convert" in line]


# -- happy paths --------------------------------------------------------------------


def test_flat_to_lvm_and_back_to_flat(node: Node, guest_vg: LvmEnv, tmp_path: Path) -> None:
    uuid = make_instance(node, root="flat", size_mib=SIZE_MIB, data_mib=DATA_MIB, local_mib=4)
    d = node.instances / uuid
    sh("qemu-io", "-f", "raw", "-c", "write -P 3 0 1M", str(d / "disk.local"))
    before_xml = node.xml(uuid)
    shas = {n: guest_sha(d / n, "raw", tmp_path) for n in ("disk", "disk.local")}

    res = node.run("migrate", uuid, "--to", "lvm", "--yes")
    assert res.returncode == 0, res.stderr
    lvs = {n: lv_path(guest_vg, uuid, n) for n in ("disk", "disk.local")}
    assert instance_lvs(guest_vg, uuid) == {Path(p).name for p in lvs.values()}
    for name, path in lvs.items():
        assert guest_sha(path, "raw", tmp_path) == shas[name], name
    assert vda(node, uuid) == ("block", lvs["disk"], "raw")
    xml = node.xml(uuid)
    assert without_disk(without_disk(xml, "vda"), "vdb") == without_disk(
        without_disk(before_xml, "vda"), "vdb"
    )
    assert f"<source dev='{lvs['disk.local']}'" in disk_element(node, uuid, "vdb")
    # thick LVs: qemu-img must write every zero (their extents held anything before)
    assert convert_lines(node) and all("--target-is-zero" not in c for c in convert_lines(node))
    rec = node.record(uuid)
    locations = [(x["backend"], *x["location"].values()) for x in rec["disks"]]
    assert locations == [
        ("lvm", guest_vg.vg, Path(lvs["disk"]).name),
        ("lvm", guest_vg.vg, Path(lvs["disk.local"]).name),
    ]
    assert sorted(r["path"] for r in rec["retained_sources"]) == [
        str(d / "disk"),
        str(d / "disk.local"),
    ]
    assert json.loads((d / "disk.info").read_text()) == {p: "raw" for p in lvs.values()}
    tags = set(LVM(guest_vg.runner()).get_volume(guest_vg.vg, Path(lvs["disk"]).name).tags)
    assert {f"storagectl.instance={uuid}", "storagectl.disk=disk"} <= tags
    inst = json.loads(node.run("inspect", "-o", "json", uuid).stdout)["instances"][0]
    assert inst["source"] == "metadata" and inst["findings"] == [], inst

    # back to flat files, where the retained flat sources sit (a round trip): the plan
    # says they are moved aside, and with --delete-retained deleted at cleanup
    res = node.run("migrate", uuid, "--to", "flat", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "kept, renamed to" in res.stdout, res.stdout
    res = node.run("migrate", uuid, "--to", "flat", "--dry-run", "--delete-retained")
    assert res.returncode == 0 and "deleted at cleanup (--delete-retained)" in res.stdout
    assert sorted(dir_names(d)) == sorted(["disk", "disk.info", "disk.local", "storage.yaml"])
    res = node.run("migrate", uuid, "--to", "flat", "--yes", "--delete-source", "--delete-retained")
    assert res.returncode == 0, res.stderr
    for name in ("disk", "disk.local"):
        assert guest_sha(d / name, "raw", tmp_path) == shas[name], name
    assert vda(node, uuid) == ("file", str(d / "disk"), "raw")
    assert without_disk(node.xml(uuid), "vdb") == without_disk(before_xml, "vdb")
    assert instance_lvs(guest_vg, uuid) == set()  # --delete-source removed both LVs
    assert node.record(uuid)["retained_sources"] == []
    assert dir_names(d) == CLEAN_INSTANCE_DIR


def test_sparse_lv_target_stays_sparse(node: Node, guest_vg: LvmEnv) -> None:
    """Nova's sparse_logical_volumes: a 256 MiB disk holding 4 MiB must not provision the
    thin pool (64 MiB, a quarter of the disk): the copy skips zeros
    (``--target-is-zero``) on a new thin LV."""
    node.conf.write_text(node.conf.read_text() + "sparse_logical_volumes = True\n")
    uuid = make_instance(node, root="qcow2", size_mib=256, data_mib=4, local_mib=None)
    d = node.instances / uuid
    res = node.run("migrate", uuid, "--to", "lvm", "--yes")
    assert res.returncode == 0, res.stderr
    name = LVM.volume_name(uuid, "disk")
    assert instance_lvs(guest_vg, uuid) >= {name, f"{name}_pool"}
    lv = LVM(guest_vg.runner()).get_volume(guest_vg.vg, name)
    assert (lv.thin, lv.size, lv.attr[0], lv.attr[7]) == (True, 256 * MiB, "V", "z")
    lines = convert_lines(node)
    assert lines and all("--target-is-zero" in c and lv.path in c for c in lines), lines
    report = guest_vg.run(
        "lvs", "--reportformat", "json", "-o", "lv_name,data_percent", f"{guest_vg.vg}/{name}_pool"
    ).stdout
    (pool,) = json.loads(report)["report"][0]["lv"]
    # 4 MiB of base + 1 MiB of overlay in a 64 MiB pool (writing the zeros: 100%, lost writes)
    assert float(pool["data_percent"]) < 20.0, pool
    # (the data itself: the verify step compared all 256 MiB; a second compare costs
    # tens of seconds under TCG)
    assert vda(node, uuid) == ("block", lv.path, "raw")
    assert [r["path"] for r in node.record(uuid)["retained_sources"]] == [str(d / "disk")]
    res = node.run("migrate", "--delete-retained", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    # the instance's LVs go with the instance: the private pool leaves with its LV
    LVM(guest_vg.runner()).remove(guest_vg.vg, name)
    assert instance_lvs(guest_vg, uuid) == set()


# -- refusals -----------------------------------------------------------------------


def test_lvm_refusals_change_nothing(node: Node, guest_vg: LvmEnv) -> None:
    # 8 GiB virtual (4 MiB of data): more than the guest disk's whole VG
    uuid = make_instance(node, root="qcow2", size_mib=8192, data_mib=1, local_mib=None)
    before = snapshot(node, uuid)
    refused(
        node.run("migrate", uuid, "--to", "lvm", "--volume-group", "stctl_no_such_vg", "--yes"),
        "volume group stctl_no_such_vg not found",
    )
    refused(
        node.run("migrate", uuid, "--to", "lvm", "--yes"),
        "not enough space",
        f"volume group {guest_vg.vg}",
    )
    name = LVM.volume_name(uuid, "disk")
    guest_vg.run("lvcreate", "--yes", "-L", "4m", "-n", name, guest_vg.vg)
    refused(
        node.run("migrate", uuid, "--to", "lvm", "--yes"),
        f"the target {lv_path(guest_vg, uuid)} already exists",
    )
    assert instance_lvs(guest_vg, uuid) == {name}  # the stray LV is not ours to remove
    guest_vg.run("lvremove", "--yes", f"{guest_vg.vg}/{name}")
    assert snapshot(node, uuid) == before
    assert not (node.instances / uuid / "storage.migration.json").exists()


# -- kill -9 at every step boundary ------------------------------------------------------


def boundaries() -> list[tuple[str, str]]:
    """Each ``step:phase`` with the recovery to test after it: resume and rollback
    alternate so that each of them meets both phases (plan:before rollback, plan:after
    resume, preflight:before resume, preflight:after rollback, ...)."""
    out = []
    for k, step in enumerate(STEPS):
        for p, phase in enumerate(("before", "after")):
            out.append((f"{step}:{phase}", "rollback" if (k + p) % 2 == 0 else "resume"))
    return out


def test_kill_at_every_boundary_qcow2_lvm_both_ways(
    node: Node, guest_vg: LvmEnv, tmp_path: Path
) -> None:
    """qcow2 -> lvm and lvm -> qcow2, killed at each of the 14 boundaries.

    One instance walks back and forth: a rollback leaves it where it was, a resume
    moves it to the other side, where the next kill is in the other direction (the
    retained source is deleted first, as it holds the name the way back needs).
    Every boundary of each direction is met once, half of them with --rollback.
    """
    uuid = make_instance(node, root="qcow2", size_mib=SIZE_MIB, data_mib=DATA_MIB, local_mib=None)
    d = node.instances / uuid
    lv = lv_path(guest_vg, uuid)
    want = guest_view(node, uuid, tmp_path)
    todo = {"lvm": boundaries(), "qcow2": boundaries()}
    seen: list[str] = []
    on = "qcow2"
    while todo["lvm"] or todo["qcow2"]:
        to = "lvm" if on == "qcow2" else "qcow2"
        if not todo[to]:  # only the other direction is left: cross over plainly
            res = node.run("migrate", uuid, "--to", to, "--yes")
            assert res.returncode == 0, res.stderr
            res = node.run("migrate", "--delete-retained", uuid, "--yes")
            assert res.returncode == 0, res.stderr
            on = to
            continue
        fault, how = todo[to].pop(0)
        where = f"{on}->{to} killed at {fault}, then --{how}"
        before = snapshot(node, uuid)
        res = node.killed("migrate", uuid, "--to", to, "--yes", fault=fault)
        assert res.returncode == -signal.SIGKILL, (where, res.stderr)
        assert (d / "storage.migration.json").exists(), where
        # at the boundary: the domain points at a complete disk with the same data
        assert guest_view(node, uuid, tmp_path) == want, (where, vda(node, uuid))

        res = node.run("migrate", f"--{how}", uuid, "--yes")
        assert res.returncode == 0, (where, res.stderr)
        assert not (d / "storage.migration.json").exists(), where
        assert leftovers(node, uuid) == [], where
        assert guest_view(node, uuid, tmp_path) == want, (where, vda(node, uuid))
        if how == "rollback":
            assert snapshot(node, uuid) == before, where
            assert instance_lvs(guest_vg, uuid) == ({Path(lv).name} if on == "lvm" else set())
        else:
            on = to
            rec = node.record(uuid)
            assert rec["disks"][0]["backend"] == to, where
            if to == "lvm":
                assert vda(node, uuid) == ("block", lv, "raw"), where
                assert [r["path"] for r in rec["retained_sources"]] == [str(d / "disk")]
            else:
                assert vda(node, uuid) == ("file", str(d / "disk"), "qcow2"), where
                assert [r["volume"] for r in rec["retained_sources"]] == [Path(lv).name]
            assert without_disk(node.xml(uuid), "vda") == without_disk(before["xml"], "vda")
            res = node.run("migrate", "--delete-retained", uuid, "--yes")
            assert res.returncode == 0, (where, res.stderr)
            assert node.record(uuid)["retained_sources"] == [], where
        # nothing leaked: the LV exists exactly when the domain uses it
        assert instance_lvs(guest_vg, uuid) == ({Path(lv).name} if on == "lvm" else set()), where
        files = {"disk.info", "storage.yaml"} | ({"disk"} if on == "qcow2" else set())
        assert set(p.name for p in d.iterdir()) == files, where
        seen.append(f"{on}:{where}")
    assert len(seen) == 28, seen


def test_lvm_root_to_qcow2_keeps_the_lv_until_deleted(
    node: Node, guest_vg: LvmEnv, tmp_path: Path
) -> None:
    """An instance born on LVM (Nova's images_type=lvm) moves to a standalone qcow2."""
    uuid = lvm_instance(node, guest_vg)
    d = node.instances / uuid
    lv = lv_path(guest_vg, uuid)
    want = guest_sha(lv, "raw", tmp_path)
    res = node.run("migrate", uuid, "--to", "qcow2", "--yes")
    assert res.returncode == 0, res.stderr
    assert vda(node, uuid) == ("file", str(d / "disk"), "qcow2")
    assert guest_sha(d / "disk", "qcow2", tmp_path) == want
    info = json.loads(sh("qemu-img", "info", "--output=json", str(d / "disk")).stdout)
    assert info["format"] == "qcow2" and "backing-filename" not in info
    assert json.loads((d / "disk.info").read_text()) == {str(d / "disk"): "qcow2"}
    assert instance_lvs(guest_vg, uuid) == {Path(lv).name}  # retained
    res = node.run("migrate", "--delete-retained", uuid, "--yes")
    assert res.returncode == 0 and lv in res.stdout, res.stdout + res.stderr
    assert instance_lvs(guest_vg, uuid) == set()
