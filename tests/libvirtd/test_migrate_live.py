"""Live moves (issue #16) of a running guest on the real libvirtd: a firmware-only KVM (or
TCG) guest that keeps its disks open, its disks copied with libvirt's block copy and
pivoted, guest writes made through QEMU's own block layer (HMP ``qemu-io``) before,
during and after the mirror, and read back from the target.

File targets here (qcow2 <-> flat); RBD pairs are in tests/ceph/test_migrate_live_rbd.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.env.libvirtd import Libvirtd, restart_libvirtd
from tests.migrate_support import (
    LIVE_STEPS,
    Node,
    domain_disk,
    guest_sha,
    hmp_write,
    live_disk,
    make_instance,
    new_node,
    read_pattern,
    refused,
    start,
    wait_while_running,
    without_disk,
)

STARTED: list[str] = []


@pytest.fixture
def node(libvirtd: Libvirtd, libvirt_workdir: Path) -> Iterator[Node]:
    yield new_node(libvirtd, libvirt_workdir)
    conn = libvirtd.connect()
    while STARTED:  # a failed test's guest is not left running
        with contextlib.suppress(libvirt.libvirtError):
            dom = conn.lookupByUUIDString(STARTED.pop())
            if dom.isActive():
                dom.destroy()


def running(node: Node, root: str = "qcow2", **kw) -> str:
    uuid = make_instance(node, root=root, **kw)
    start(node, uuid)
    STARTED.append(uuid)
    return uuid


def journal(node: Node, uuid: str) -> dict | None:
    path = node.instances / uuid / "storage.migration.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def test_a_running_qcow2_guest_moves_live_to_flat_with_every_write(
    node: Node, tmp_path: Path
) -> None:
    uuid = running(node, data_mib=8)
    d = node.instances / uuid
    before_xml = node.xml(uuid)
    hmp_write(node, uuid, "vda", 0x11, "6M", "64k")  # before the copy
    proc = node.spawn("migrate", uuid, "--to", "flat", "--yes", "--bwlimit", "1")
    wait_while_running(proc, lambda: (journal(node, uuid) or {}).get("step") == "ready")
    hmp_write(node, uuid, "vda", 0x22, "7M", "64k")  # during the mirror
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "live (pivot" in out and "pivoted in" in err
    hmp_write(node, uuid, "vda", 0x33, "8M", "64k")  # after the pivot
    # the guest never stopped; it runs on the new raw file (live alias: same inode)
    dom = node.libvirtd.connect().lookupByUUIDString(uuid)
    assert dom.isActive()
    live_path, live_fmt = live_disk(node, uuid, "vda")
    assert live_fmt == "raw" and os.path.samefile(live_path, d / "disk")
    # the persistent definition, the record and disk.info say flat under Nova's name
    assert domain_disk(node, uuid, "vda") == (str(d / "disk"), "raw")
    # nothing else in the persistent definition changed (Nova's <metadata> included)
    assert without_disk(node.xml(uuid), "vda") == without_disk(before_xml, "vda")
    assert "<nova:instance" in before_xml or "nova:instance" in before_xml
    rec = node.record(uuid)
    root = next(x for x in rec["disks"] if x["name"] == "disk")
    assert root["backend"] == "flat" and root["format"] == "raw"
    assert json.loads((d / "disk.info").read_text())[str(d / "disk")] == "raw"
    # every write is on the target, read with its explicit format
    for pattern, offset in ((0x11, "6M"), (0x22, "7M"), (0x33, "8M")):
        assert read_pattern(d / "disk", "raw", pattern, offset, "64k"), hex(pattern)
    assert read_pattern(d / "disk", "raw", 5, "0", "1M")  # the base image's data
    assert read_pattern(d / "disk", "raw", 9, "2M", "1M")  # the overlay's
    # the source is retained, as offline
    assert (d / "disk.retained-qcow2").exists()
    # inspect and audit read it as stored (the alias is no leftover), Nova too; the one
    # warning: the guest runs on the alias, which a Nova live migration would carry away
    res = node.run("audit", "-o", "json")
    found = [
        f
        for f in json.loads(res.stdout)["findings"]
        if f.get("instance") == uuid and f["severity"] in ("warning", "critical")
    ]
    assert [(f["code"], f["disk"]) for f in found] == [("running-on-live-alias", "disk")], found
    assert "disk.migrating" in found[0]["message"] and "live migration" in found[0]["message"]
    # shut off: the alias goes with --delete-retained; it boots from Nova's name
    dom.destroy()
    res = node.cli("migrate", "--delete-retained", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in d.iterdir() if "migrating" in p.name) == []
    dom.create()
    assert live_disk(node, uuid, "vda") == (str(d / "disk"), "raw")
    res = node.run("audit", "-o", "json")
    assert not [
        f
        for f in json.loads(res.stdout)["findings"]
        if f.get("instance") == uuid and f["severity"] in ("warning", "critical")
    ], res.stdout
    dom.destroy()


def test_offline_refuses_a_running_guest_and_the_plan_says_live(node: Node) -> None:
    uuid = running(node)
    res = node.cli("migrate", uuid, "--to", "flat", "--offline", "--yes")
    refused(res, "it is running", "without --offline")
    res = node.cli("migrate", uuid, "--to", "flat", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "live (the guest runs)" in res.stdout and "mirror" in res.stdout
    assert journal(node, uuid) is None


@pytest.mark.parametrize("fault", [f"{s}:{p}" for s in LIVE_STEPS for p in ("before", "after")])
def test_kill_9_at_every_boundary_then_resume(node: Node, tmp_path: Path, fault: str) -> None:
    uuid = running(node, local_mib=None)
    d = node.instances / uuid
    res = node.killed("migrate", uuid, "--to", "flat", "--yes", fault=fault)
    assert res.returncode == -9, res.stderr
    dom = node.libvirtd.connect().lookupByUUIDString(uuid)
    assert dom.isActive()  # the guest never stops
    hmp_write(node, uuid, "vda", 0x44, "5M", "64k")  # while storagectl is dead
    res = node.cli("migrate", "--resume", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert journal(node, uuid) is None
    assert domain_disk(node, uuid, "vda") == (str(d / "disk"), "raw")
    assert read_pattern(d / "disk", "raw", 0x44, "5M", "64k")
    assert read_pattern(d / "disk", "raw", 9, "2M", "1M")
    dom.destroy()


BEFORE_PIVOT = [
    f"{s}:{p}" for s in LIVE_STEPS[: LIVE_STEPS.index("pivot")] for p in ("before", "after")
] + ["pivot:before"]
AFTER_PIVOT = [f for f in (f"{s}:{p}" for s in LIVE_STEPS for p in ("before", "after"))
               if f not in BEFORE_PIVOT]  # fmt: skip


@pytest.mark.parametrize("fault", BEFORE_PIVOT)
def test_kill_9_then_rollback_keeps_the_guest_on_its_source(
    node: Node, tmp_path: Path, fault: str
) -> None:
    uuid = running(node, local_mib=None)
    d = node.instances / uuid
    before = node.xml(uuid)
    res = node.killed("migrate", uuid, "--to", "flat", "--yes", fault=fault)
    assert res.returncode == -9, res.stderr
    hmp_write(node, uuid, "vda", 0x55, "5M", "64k")
    res = node.cli("migrate", "--rollback", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert journal(node, uuid) is None
    assert live_disk(node, uuid, "vda") == (str(d / "disk"), "qcow2")
    assert node.xml(uuid) == before
    assert sorted(p.name for p in d.iterdir()) == ["disk", "disk.info", "storage.yaml"]
    dom = node.libvirtd.connect().lookupByUUIDString(uuid)
    assert not dom.blockJobInfo("vda", 0)
    dom.destroy()  # QEMU writes its qcow2 metadata back; then the write is in the file
    assert read_pattern(d / "disk", "qcow2", 0x55, "5M", "64k", shared=False)


@pytest.mark.parametrize("fault", AFTER_PIVOT)
def test_rollback_after_the_pivot_is_refused_resume_finishes(node: Node, fault: str) -> None:
    uuid = running(node, local_mib=None)
    res = node.killed("migrate", uuid, "--to", "flat", "--yes", fault=fault)
    assert res.returncode == -9
    before = (node.instances / uuid / "storage.migration.json").read_bytes()
    res = node.cli("migrate", "--rollback", uuid, "--yes")
    refused(res, "pivoted", "--resume")
    assert (node.instances / uuid / "storage.migration.json").read_bytes() == before
    res = node.cli("migrate", "--resume", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert live_disk(node, uuid, "vda")[1] == "raw"
    node.libvirtd.connect().lookupByUUIDString(uuid).destroy()


def test_a_copy_that_cannot_converge_ends_cleanly(node: Node) -> None:
    """--bwlimit far below what there is to copy, and a short --converge-timeout: the
    job is aborted, the target removed, the guest on its source, nothing left."""
    uuid = running(node, data_mib=24, local_mib=None)
    d = node.instances / uuid
    before = node.xml(uuid)
    t0 = time.monotonic()
    res = node.cli(
        "migrate", uuid, "--to", "flat", "--yes", "--bwlimit", "1", "--converge-timeout", "3"
    )
    assert res.returncode == 1, res.stderr
    assert "was not ready after 3 s" in res.stderr and "--sync-writes" in res.stderr
    assert "rolled back" in res.stderr
    assert time.monotonic() - t0 < 60
    assert live_disk(node, uuid, "vda") == (str(d / "disk"), "qcow2")
    assert node.xml(uuid) == before and journal(node, uuid) is None
    assert sorted(p.name for p in d.iterdir()) == ["disk", "disk.info", "storage.yaml"]
    node.libvirtd.connect().lookupByUUIDString(uuid).destroy()


def test_verify_paused_compares_then_pivots_and_reports_the_pause(
    node: Node, tmp_path: Path
) -> None:
    uuid = make_instance(node, local_mib=None, root="flat")
    d = node.instances / uuid
    before = guest_sha(d / "disk", "raw", tmp_path)
    start(node, uuid)
    STARTED.append(uuid)
    res = node.cli("migrate", uuid, "--to", "qcow2", "--yes", "--verify", "paused")
    assert res.returncode == 0, res.stderr
    assert "guest paused" in res.stdout and "was paused" in res.stderr
    dom = node.libvirtd.connect().lookupByUUIDString(uuid)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert domain_disk(node, uuid, "vda") == (str(d / "disk"), "qcow2")
    dom.destroy()
    assert guest_sha(d / "disk", "qcow2", tmp_path) == before


def test_the_target_stays_sparse(node: Node) -> None:
    """A 256 MiB disk holding 8 MiB: the mirror writes no zeros into the new file."""
    uuid = running(node, root="flat", size_mib=256, data_mib=8, local_mib=None)
    d = node.instances / uuid
    res = node.cli("migrate", uuid, "--to", "qcow2", "--yes")
    assert res.returncode == 0, res.stderr
    allocated = os.stat(d / "disk").st_blocks * 512
    assert allocated < 24 << 20, allocated
    node.libvirtd.connect().lookupByUUIDString(uuid).destroy()


def test_the_nova_guard_applies_to_live_moves(node: Node) -> None:
    node.strict = True  # the command line as written: no --assume added
    node.flip([("libvirt", "images_type", "qcow2")])
    uuid = running(node)
    res = node.cli("migrate", uuid, "--to", "flat", "--yes")
    refused(res, "images_type")
    assert journal(node, uuid) is None
    node.libvirtd.connect().lookupByUUIDString(uuid).destroy()


def test_hmp_write_reaches_the_disk(node: Node) -> None:
    """The probe itself: a write through QEMU's block layer lands in the open image."""
    uuid = running(node, local_mib=None, root="flat")
    hmp_write(node, uuid, "vda", 0x66, "3M", "64k")
    assert read_pattern(node.instances / uuid / "disk", "raw", 0x66, "3M", "64k", shared=True)
    assert not read_pattern(node.instances / uuid / "disk", "raw", 0x67, "3M", "64k", shared=True)
    node.libvirtd.connect().lookupByUUIDString(uuid).destroy()


def test_a_host_conversion_moves_its_running_guests_live(node: Node) -> None:
    """migrate --all: shut-off instances offline, running ones live, one report; with
    --offline the running one is listed and never touched."""
    off = make_instance(node, local_mib=None)
    on = running(node, local_mib=None)
    res = node.cli("migrate", "--all", "--to", "flat", "--offline", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert f"({on}): it is running: --offline" in res.stdout
    res = node.cli("migrate", "--all", "--to", "flat", "--dry-run")
    assert f"({on}) (running: live): disk qcow2->flat" in res.stdout
    assert f"({off}): disk qcow2->flat" in res.stdout
    hmp_write(node, on, "vda", 0x77, "5M", "64k")
    res = node.cli("migrate", "--all", "--to", "flat", "--parallel", "2", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 instance(s) moved" in res.stdout
    for uuid in (off, on):
        d = node.instances / uuid
        assert domain_disk(node, uuid, "vda") == (str(d / "disk"), "raw")
    assert live_disk(node, on, "vda")[1] == "raw"
    node.libvirtd.connect().lookupByUUIDString(on).destroy()
    assert read_pattern(node.instances / on / "disk", "raw", 0x77, "5M", "64k", shared=False)


def test_libvirtd_restarted_mid_mirror_then_resume(node: Node) -> None:
    """storagectl killed and libvirtd restarted while the copy runs: the guest runs on,
    --resume finds the copy (or starts it again) and finishes; no write is lost."""
    uuid = running(node, local_mib=None, data_mib=12)
    d = node.instances / uuid
    proc = node.spawn("migrate", uuid, "--to", "flat", "--yes", "--bwlimit", "1")
    wait_while_running(proc, lambda: (journal(node, uuid) or {}).get("step") == "ready")
    proc.kill()
    proc.communicate()
    restart_libvirtd(node.libvirtd)
    dom = node.libvirtd.connect().lookupByUUIDString(uuid)
    assert dom.isActive()
    hmp_write(node, uuid, "vda", 0x7A, "13M", "64k")
    res = node.cli("migrate", "--resume", uuid, "--yes", timeout=300)
    assert res.returncode == 0, res.stderr
    assert domain_disk(node, uuid, "vda") == (str(d / "disk"), "raw")
    assert live_disk(node, uuid, "vda")[1] == "raw"
    dom.destroy()
    assert read_pattern(d / "disk", "raw", 0x7A, "13M", "64k", shared=False)
    assert read_pattern(d / "disk", "raw", 9, "2M", "1M", shared=False)


def test_sync_writes_starts_a_write_blocking_copy(node: Node) -> None:
    """--sync-writes (VIR_DOMAIN_BLOCK_COPY_SYNCHRONOUS_WRITES, QEMU's write-blocking
    mirror): libvirt 9.0 / QEMU 7.2 take it at job start, the copy converges, and a
    write made while it runs is on the target."""
    uuid = running(node, local_mib=None, data_mib=8)
    d = node.instances / uuid
    proc = node.spawn("migrate", uuid, "--to", "flat", "--yes", "--sync-writes", "--bwlimit", "1")
    wait_while_running(proc, lambda: (journal(node, uuid) or {}).get("step") == "ready")
    xml = node.libvirtd.connect().lookupByUUIDString(uuid).XMLDesc(0)
    assert "<mirror" in xml  # the copy runs
    hmp_write(node, uuid, "vda", 0x5E, "9M", "64k")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    node.libvirtd.connect().lookupByUUIDString(uuid).destroy()
    assert read_pattern(d / "disk", "raw", 0x5E, "9M", "64k", shared=False)


def test_a_pivot_storagectl_did_not_journal_is_found_after_the_guest_stopped(node: Node) -> None:
    """Killed between the pivot and its journal entry, then the guest shut off: the
    persistent definition (libvirt rewrites it at the pivot) says the guest wrote to the
    target - a rollback would drop those writes, so it is refused; resume finishes."""
    uuid = running(node, local_mib=None)
    d = node.instances / uuid
    res = node.killed("migrate", uuid, "--to", "flat", "--yes", fault="pivot:before")
    assert res.returncode == -9
    dom = node.libvirtd.connect().lookupByUUIDString(uuid)
    dom.blockJobAbort("vda", libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)  # what it had done
    hmp_write(node, uuid, "vda", 0x6B, "5M", "64k")  # on the target only
    dom.destroy()
    res = node.cli("migrate", "--rollback", uuid, "--yes")
    refused(res, "pivoted", "--resume")
    res = node.cli("migrate", "--resume", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert domain_disk(node, uuid, "vda") == (str(d / "disk"), "raw")
    assert read_pattern(d / "disk", "raw", 0x6B, "5M", "64k", shared=False)


def test_restarted_after_the_switch_rollback_is_still_refused(node: Node) -> None:
    """Killed after the switch, the guest restarted (it now runs on Nova's name, not the
    alias): the migration is still past its pivot - rollback refused, resume finishes."""
    uuid = running(node, local_mib=None)
    d = node.instances / uuid
    res = node.killed("migrate", uuid, "--to", "flat", "--yes", fault="switch:after")
    assert res.returncode == -9
    dom = node.libvirtd.connect().lookupByUUIDString(uuid)
    dom.destroy()
    dom.create()
    assert live_disk(node, uuid, "vda") == (str(d / "disk"), "raw")
    hmp_write(node, uuid, "vda", 0x7B, "5M", "64k")
    res = node.cli("migrate", "--rollback", uuid, "--yes")
    refused(res, "pivoted", "--resume")
    res = node.cli("migrate", "--resume", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    dom.destroy()
    assert read_pattern(d / "disk", "raw", 0x7B, "5M", "64k", shared=False)


def test_a_live_alias_in_the_way_of_a_move_back_is_explained_then_removed(node: Node) -> None:
    uuid = running(node, local_mib=None)
    d = node.instances / uuid
    assert node.cli("migrate", uuid, "--to", "flat", "--yes").returncode == 0
    res = node.cli("migrate", uuid, "--to", "qcow2", "--yes")  # still on disk.migrating
    refused(res, "second name", "start it again", "--delete-retained")
    dom = node.libvirtd.connect().lookupByUUIDString(uuid)
    dom.destroy()
    dom.create()  # now on Nova's name
    res = node.cli("migrate", "--delete-retained", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert not (d / "disk.migrating").exists() and (d / "disk").exists()
    res = node.cli("migrate", uuid, "--to", "qcow2", "--yes")
    assert res.returncode == 0, res.stderr
    assert live_disk(node, uuid, "vda")[1] == "qcow2"


@pytest.mark.parametrize("parallel", [1, 2])
def test_parallel_bounds_the_copies_that_run_at_once(node: Node, parallel: int) -> None:
    """--parallel N: at most N copies run that are not ready yet; the next one starts
    once one is ready (a ready copy only mirrors new writes). Sampled from the live XML
    while the move runs, two disks slowed with --bwlimit."""
    from storagectl.migrate.live import mirrors

    uuid = running(node, root="flat", data_mib=6, local_mib=8)  # both raw: both move
    d = node.instances / uuid
    dom = node.libvirtd.connect().lookupByUUIDString(uuid)
    hmp_write(node, uuid, "vdb", 0x5C, "1M", "6M")  # data, so that its copy takes a while
    proc = node.spawn(
        "migrate", uuid, "--to", "qcow2", "--yes", "--bwlimit", "2", "--parallel", str(parallel)
    )
    most, seen = 0, set()
    while proc.poll() is None:
        with contextlib.suppress(libvirt.libvirtError):
            copying = {
                dev for dev, m in mirrors(dom.XMLDesc(0)).items()
                if m.mirror is not None and m.ready != "yes"
            }  # fmt: skip
            most = max(most, len(copying))
            seen |= copying
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert most == parallel, (most, seen)
    assert seen == {"vda", "vdb"}  # both were copied (sampled mid-copy)
    assert live_disk(node, uuid, "vda")[1] == live_disk(node, uuid, "vdb")[1] == "qcow2"
    dom.destroy()
    assert read_pattern(d / "disk", "qcow2", 7, "1M", "6M", shared=False)
    assert read_pattern(d / "disk.local", "qcow2", 0x5C, "1M", "6M", shared=False)


@pytest.mark.parametrize("then", ["--resume", "--rollback"])
def test_killed_with_a_copy_not_started_yet_then_resume_or_rollback(node: Node, then: str) -> None:
    """--parallel 1, two disks, kill -9 while the first copy runs (the second not started
    yet): --resume starts the second into a fresh target and finishes; --rollback aborts the
    first and removes both targets. Every guest write is kept either way."""
    uuid = running(node, root="flat", data_mib=6, local_mib=8)
    d = node.instances / uuid
    res = node.killed("migrate", uuid, "--to", "qcow2", "--yes", fault="ready:before")
    assert res.returncode == -9, res.stderr
    from storagectl.migrate.live import mirrors

    state = mirrors(node.libvirtd.connect().lookupByUUIDString(uuid).XMLDesc(0))
    assert state["vda"].mirror and state["vdb"].mirror is None, state
    hmp_write(node, uuid, "vdb", 0x6C, "2M", "64k")  # on the source: no copy runs yet
    hmp_write(node, uuid, "vda", 0x6D, "2M", "64k")  # mirrored (its copy runs)
    res = node.cli("migrate", then, uuid, "--yes")
    assert res.returncode == 0, res.stderr
    fmt = "qcow2" if then == "--resume" else "raw"
    assert live_disk(node, uuid, "vda")[1] == live_disk(node, uuid, "vdb")[1] == fmt
    if then == "--rollback":
        assert live_disk(node, uuid, "vda")[0] == str(d / "disk")
        assert sorted(p.name for p in d.iterdir() if "migrating" in p.name) == []
    node.libvirtd.connect().lookupByUUIDString(uuid).destroy()
    assert read_pattern(d / "disk", fmt, 0x6D, "2M", "64k", shared=False)
    assert read_pattern(d / "disk.local", fmt, 0x6C, "2M", "64k", shared=False)
    assert read_pattern(d / "disk", fmt, 7, "1M", "1M", shared=False)


@pytest.mark.parametrize("verify", ["mirror", "paused"])
def test_a_paused_guest_moves_live_and_stays_paused(node: Node, verify: str) -> None:
    """A paused instance (virsh suspend, Nova's pause) moves like a running one: QEMU's
    block jobs run while the vCPUs are stopped. It is still paused afterwards, also after
    --verify paused (which must not resume a guest it did not pause)."""
    uuid = running(node, data_mib=6, local_mib=None)
    d = node.instances / uuid
    dom = node.libvirtd.connect().lookupByUUIDString(uuid)
    hmp_write(node, uuid, "vda", 0x4E, "5M", "64k")
    dom.suspend()
    res = node.cli("migrate", uuid, "--to", "flat", "--yes", "--verify", verify)
    assert res.returncode == 0, res.stderr
    assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    path, fmt = live_disk(node, uuid, "vda")
    assert fmt == "raw" and os.path.samefile(path, d / "disk")
    dom.resume()
    hmp_write(node, uuid, "vda", 0x4F, "6M", "64k")  # it writes to the target once resumed
    dom.destroy()
    for pattern, offset in ((0x4E, "5M"), (0x4F, "6M"), (9, "2M")):
        assert read_pattern(d / "disk", "raw", pattern, offset, "64k", shared=False), hex(pattern)


def test_pivoted_then_restarted_on_its_source_resume_and_rollback_are_refused(
    node: Node,
) -> None:
    """Killed after the pivot (journaled), then the domain rebuilt from a definition that
    names the source and started - what a Nova hard reboot (or a host boot's resume of its
    guests) does before the switch: the writes are split between target and source.
    Resume would hide the newest, a new copy would overwrite the older: both refused, the
    journal, the source and the target untouched."""
    uuid = running(node, local_mib=None)
    d = node.instances / uuid
    before = node.xml(uuid)
    res = node.killed("migrate", uuid, "--to", "flat", "--yes", fault="pivot:after")
    assert res.returncode == -9, res.stderr
    hmp_write(node, uuid, "vda", 0x8A, "5M", "64k")  # on the target
    conn = node.libvirtd.connect()
    conn.lookupByUUIDString(uuid).destroy()
    conn.defineXML(before)  # Nova's view of the disk: the qcow2 source
    conn.lookupByUUIDString(uuid).create()
    hmp_write(node, uuid, "vda", 0x8B, "6M", "64k")  # on the source
    journal_before = (d / "storage.migration.json").read_bytes()
    for mode in ("--resume", "--rollback"):
        res = node.cli("migrate", mode, uuid, "--yes")
        refused(res, "pivoted")
        assert (d / "storage.migration.json").read_bytes() == journal_before, mode
    res = node.cli("migrate", "--resume", uuid, "--yes")
    refused(res, "now runs on", "split writes")
    conn.lookupByUUIDString(uuid).destroy()
    assert read_pattern(d / "disk.migrating", "raw", 0x8A, "5M", "64k", shared=False)
    assert read_pattern(d / "disk", "qcow2", 0x8B, "6M", "64k", shared=False)


def test_disks_moves_only_the_named_disks_live(node: Node) -> None:
    """--disks root on a running guest with a raw root and a raw disk.local, --to qcow2:
    only vda is copied and pivoted; vdb keeps running on its file, no job was ever on it."""
    uuid = running(node, root="flat", data_mib=4, local_mib=8)
    d = node.instances / uuid
    local_before = (d / "disk.local").lstat().st_ino
    res = node.cli("migrate", uuid, "--to", "qcow2", "--disks", "root", "--yes")
    assert res.returncode == 0, res.stderr
    path, fmt = live_disk(node, uuid, "vda")
    assert fmt == "qcow2" and os.path.samefile(path, d / "disk")
    assert live_disk(node, uuid, "vdb") == (str(d / "disk.local"), "raw")
    assert (d / "disk.local").lstat().st_ino == local_before
    assert domain_disk(node, uuid, "vdb") == (str(d / "disk.local"), "raw")
    rec = {x["name"]: x for x in node.record(uuid)["disks"]}
    assert rec["disk"]["format"] == "qcow2" and rec["disk.local"]["format"] == "raw"
    node.libvirtd.connect().lookupByUUIDString(uuid).destroy()
    assert read_pattern(d / "disk", "qcow2", 7, "1M", "4M", shared=False)
