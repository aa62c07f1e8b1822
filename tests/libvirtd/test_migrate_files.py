"""storagectl migrate between qcow2 and flat files, on domains of the real libvirtd.

Each test builds a Nova-like instance (qcow2 root on a raw ``_base`` image, or a flat
root, plus a raw ephemeral) under ``libvirt_workdir``, defines it shut off in the real
libvirtd, persists it through the CLI, and migrates it with the CLI in a subprocess (so
the test-only ``STORAGECTL_FAULT`` hook can SIGKILL it).
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.env.libvirtd import Libvirtd
from tests.migrate_support import (
    CLEAN_INSTANCE_DIR,
    DISK_RE,
    STEPS,
    Node,
    dir_names,
    domain_disk,
    guest_sha,
    leftovers,
    new_node,
    refused,
    sh,
    snapshot,
    wait_while_running,
    without_disk,
)
from tests.migrate_support import make_instance as _make_instance


@pytest.fixture
def node(libvirtd: Libvirtd, libvirt_workdir: Path) -> Node:
    return new_node(libvirtd, libvirt_workdir)


def make_instance(node: Node, *, flat: bool = False, data_mib: int = 4) -> str:
    """A persisted, shut-off instance: root (qcow2 on raw base, or flat) + raw disk.local."""
    return _make_instance(node, root="flat" if flat else "qcow2", data_mib=data_mib)


def migrate(node: Node, uuid: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return node.cli("migrate", uuid, *args, **kw)


def test_qcow2_to_flat_then_back_with_retained_sources(node: Node, tmp_path: Path) -> None:
    uuid = make_instance(node)
    d = node.instances / uuid
    before_sha = guest_sha(d / "disk", "qcow2", tmp_path)
    before_xml = node.xml(uuid)
    res = migrate(node, uuid, "--to", "flat", "--yes")
    assert res.returncode == 0, res.stderr
    assert "copy disk: 100%" in res.stderr and "copy disk.local" not in res.stderr
    # data: the guest sees the same bytes, now from a standalone raw file
    assert sh("qemu-img", "info", "--output=json", str(d / "disk")).stdout.count('"raw"') == 1
    assert guest_sha(d / "disk", "raw", tmp_path) == before_sha
    # XML: only the root disk element changed, to driver type raw
    after_xml = node.xml(uuid)
    assert without_disk(after_xml, "vda") == without_disk(before_xml, "vda")
    assert "nova:instance" in after_xml
    vda = next(m.group(0) for m in DISK_RE.finditer(after_xml) if "dev='vda'" in m.group(0))
    assert "type='raw'" in vda and f"file='{d / 'disk'}'" in vda
    # record: backend flat, source retained; disk.info follows
    rec = node.record(uuid)
    assert rec["obtained"]["how"] == "migrated"
    assert [(x["name"], x["backend"], x["format"]) for x in rec["disks"]] == [
        ("disk", "flat", "raw"),
        ("disk.local", "flat", "raw"),
    ]
    retained = rec["retained_sources"]
    assert [(r["disk"], r["backend"], r["path"]) for r in retained] == [
        ("disk", "qcow2", str(d / "disk.retained-qcow2"))
    ]
    assert guest_sha(d / "disk.retained-qcow2", "qcow2", tmp_path) == before_sha
    assert json.loads((d / "disk.info").read_text())[str(d / "disk")] == "raw"
    assert not (d / "storage.migration.json").exists() and leftovers(node, uuid) == []
    # inspect trusts the new record and finds nothing wrong
    res = node.cli("inspect", "-o", "json", uuid)
    inst = json.loads(res.stdout)["instances"][0]
    assert inst["source"] == "metadata" and inst["findings"] == [], inst
    # back to qcow2: a second retained source
    res = migrate(node, uuid, "--to", "qcow2", "--disks", "root", "--yes")
    assert res.returncode == 0, res.stderr
    info = sh("qemu-img", "info", "--output=json", str(d / "disk")).stdout
    assert '"format": "qcow2"' in info and "backing" not in info
    assert guest_sha(d / "disk", "qcow2", tmp_path) == before_sha
    assert without_disk(node.xml(uuid), "vda") == without_disk(before_xml, "vda")
    assert [r["path"] for r in node.record(uuid)["retained_sources"]] == [
        str(d / "disk.retained-qcow2"),
        str(d / "disk.retained-flat"),
    ]
    # a third migration to flat would move the first retained qcow2 aside (#20)
    res = migrate(node, uuid, "--to", "flat", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert f"kept, renamed to {d / 'disk.retained-qcow2-1'}" in res.stdout
    res = node.cli("migrate", "--delete-retained", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert "disk.retained-qcow2" in res.stdout and "disk.retained-flat" in res.stdout
    assert node.record(uuid)["retained_sources"] == []
    # qcow2 -> flat, deleting the source this time
    res = migrate(node, uuid, "--to", "flat", "--yes", "--delete-source")
    assert res.returncode == 0, res.stderr
    assert guest_sha(d / "disk", "raw", tmp_path) == before_sha
    assert node.record(uuid)["retained_sources"] == []
    assert dir_names(d) == CLEAN_INSTANCE_DIR


@pytest.mark.parametrize("how", ["resume", "rollback"])
@pytest.mark.parametrize("fault", [f"{s}:{p}" for s in STEPS for p in ("before", "after")])
def test_kill_at_every_boundary_then_resume_or_rollback(
    node: Node, tmp_path: Path, fault: str, how: str
) -> None:
    uuid = make_instance(node, data_mib=2)
    d = node.instances / uuid
    before_sha = guest_sha(d / "disk", "qcow2", tmp_path)
    before = snapshot(node, uuid)
    res = node.killed("migrate", uuid, "--to", "flat", "--yes", fault=fault)
    assert res.returncode == -signal.SIGKILL, res.stderr
    # at the boundary: the domain points at a complete disk with the same data
    path, fmt = domain_disk(node, uuid, "vda")
    assert guest_sha(path, fmt, tmp_path) == before_sha, (path, fmt)
    assert (d / "storage.migration.json").exists()
    if fault == "copy:after":  # a new migration is refused while the journal is there
        res = node.run("migrate", uuid, "--to", "flat", "--yes")
        assert res.returncode == 1 and "--resume or --rollback" in res.stderr
        status = node.run("migrate", "--status")
        assert uuid in status.stdout and "copy (after)" in status.stdout
    res = node.run("migrate", f"--{how}", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert not (d / "storage.migration.json").exists()
    assert leftovers(node, uuid) == []
    path, fmt = domain_disk(node, uuid, "vda")
    assert guest_sha(path, fmt, tmp_path) == before_sha
    after = snapshot(node, uuid)
    if how == "rollback":
        assert after == before
    else:
        assert (path, fmt) == (str(d / "disk"), "raw")
        assert without_disk(after["xml"], "vda") == without_disk(before["xml"], "vda")
        assert node.record(uuid)["disks"][0]["backend"] == "flat"
        assert after["files"] == sorted([*before["files"], "disk.retained-qcow2"])


def test_refusals_change_nothing(node: Node, tmp_path: Path) -> None:
    uuid = make_instance(node, data_mib=1)
    d = node.instances / uuid
    before = snapshot(node, uuid)
    refused(node.run("migrate", "no-such-instance", "--to", "flat", "--yes"), "InstanceNotFound")
    # target name taken (a stray file where the copy would go)
    (d / "disk.migrating").write_bytes(b"x")
    refused(node.run("migrate", uuid, "--to", "flat", "--yes"), "disk.migrating already exists")
    (d / "disk.migrating").unlink()
    # VG missing (file -> lvm)
    refused(
        node.run(
            "migrate", uuid, "--to", "lvm", "--volume-group", "storagectl-no-such-vg", "--yes"
        ),
        "volume group storagectl-no-such-vg not found",
    )
    # the record no longer matches the domain (vdb is opened as qcow2 now)
    dom = node.libvirtd.connect().lookupByUUIDString(uuid)
    drifted = before["xml"].replace("type='raw'", "type='qcow2'", 1)
    node.libvirtd.connect().defineXML(drifted)
    refused(node.run("migrate", uuid, "--to", "flat", "--yes"), "audit", "disk.local")
    node.libvirtd.connect().defineXML(before["xml"])
    # not a terminal and no --yes; --dry-run prints the plan
    res = node.run("migrate", uuid, "--to", "flat")
    assert res.returncode == 2 and "--yes" in res.stderr
    res = node.run("migrate", uuid, "--to", "flat", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert f"{d / 'disk'} -> flat {d / 'disk'}" in res.stdout and "needs" in res.stdout
    assert "skipped disk.local: already flat" in res.stdout
    # running, with --offline (without it, a live move: tests/libvirtd/test_migrate_live.py)
    dom.create()
    try:
        res = node.run("migrate", uuid, "--to", "flat", "--offline", "--yes")
        refused(res, "is running", "shut it off")
    finally:
        dom.destroy()
    assert snapshot(node, uuid) == before
    # no record
    (d / "storage.yaml").rename(tmp_path / "storage.yaml")
    refused(node.run("migrate", uuid, "--to", "flat", "--yes"), "storagectl persist")
    (tmp_path / "storage.yaml").rename(d / "storage.yaml")
    assert snapshot(node, uuid) == before


def _hold(lock_path: str, uuid: str, ready, release) -> None:  # noqa: ANN001
    from storagectl.host.locks import instance_lock

    with instance_lock(lock_path, uuid):
        ready.set()
        release.wait(30)


def test_refused_while_another_process_holds_the_instance_lock(node: Node) -> None:
    import multiprocessing

    uuid = make_instance(node, data_mib=1)
    before = snapshot(node, uuid)
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(node.root / "locks"), uuid, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        refused(migrate(node, uuid, "--to", "flat", "--yes"), "holds its lock")
    finally:
        release.set()
        holder.join(10)
    assert snapshot(node, uuid) == before


@pytest.fixture
def small_fs(node: Node):
    """The instances directory on a 40 MiB tmpfs (its own file system, so it fills)."""
    sh("mount", "-t", "tmpfs", "-o", "size=40m,mode=0755", "tmpfs", str(node.instances))
    (node.instances / "_base").mkdir()
    yield node.instances
    sh("umount", "-l", str(node.instances))


def test_not_enough_space_is_refused(node: Node, small_fs: Path) -> None:
    uuid = make_instance(node, data_mib=12)
    filler = small_fs / "filler"
    sh("dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=20")
    before = snapshot(node, uuid)
    refused(migrate(node, uuid, "--to", "flat", "--yes"), "not enough space")
    assert snapshot(node, uuid) == before


def test_disk_full_during_the_copy_removes_the_target(
    node: Node, small_fs: Path, tmp_path: Path
) -> None:
    uuid = make_instance(node, data_mib=12)
    d = node.instances / uuid
    before, before_sha = snapshot(node, uuid), guest_sha(d / "disk", "qcow2", tmp_path)
    proc = node.spawn("migrate", uuid, "--to", "flat", "--yes", "--bwlimit", "2")
    wait_while_running(proc, (d / "disk.migrating").exists, poll=0.02)
    # fill the file system while qemu-img copies (dd stops at ENOSPC)
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={small_fs / 'filler'}", "bs=1M"], capture_output=True
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "No space left on device" in err and "rolled back" in err
    (small_fs / "filler").unlink()
    assert snapshot(node, uuid) == before
    assert guest_sha(d / "disk", "qcow2", tmp_path) == before_sha


def test_a_move_nova_would_undo_is_refused_then_done_for_the_nova_conf_to_be(
    node: Node, tmp_path: Path
) -> None:
    """Issue #15: on a Qcow2 host (use_cow_images, the default) a move to flat is what
    Nova undoes at the next hard reboot (it would open the raw root as qcow2): refused,
    nothing changed. Named with the nova.conf the host will have, it goes through, and
    audit says what Nova makes of it under each nova.conf."""
    node.strict = True
    node.conf.write_text(node.conf.read_text().replace("images_type = flat", ""))
    uuid = _make_instance(node, root="qcow2", data_mib=2, local_mib=0)
    d = node.instances / uuid
    before, before_sha = snapshot(node, uuid), guest_sha(d / "disk", "qcow2", tmp_path)
    res = migrate(node, uuid, "--to", "flat", "--yes")
    refused(res, "after the move Nova would misread it", "would open it as qcow2")
    assert "--assume '[libvirt] images_type=flat'" in res.stderr
    assert snapshot(node, uuid) == before
    to_be = ("--assume", "[libvirt] images_type=flat")
    res = migrate(node, uuid, "--to", "flat", *to_be, "--yes")
    assert res.returncode == 0, res.stderr
    assert guest_sha(d / "disk", "raw", tmp_path) == before_sha
    # (the shared libvirtd holds other tests' domains too: only this one is looked at)
    assert [(f["code"], f["disk"]) for f in serious(node, uuid)] == [("nova-would-misread", "disk")]
    assert serious(node, uuid, *to_be) == []
    # the operator sets it: clean without --assume
    node.flip([("libvirt", "images_type", "flat")])
    assert serious(node, uuid) == []


def serious(node: Node, *args: str) -> list[dict]:
    """Warnings and criticals of ``inspect ARGS`` (instances and options)."""
    res = node.cli("inspect", "-o", "json", *args)
    assert res.returncode == 0, res.stderr
    found = [f for i in json.loads(res.stdout)["instances"] for f in i["findings"]]
    return [f for f in found if f["severity"] != "info"]


def test_a_qcow2_host_converted_to_flat_killed_resumed_and_nova_conf_set(
    node: Node, tmp_path: Path
) -> None:
    """Issue #15 part 3 on the real libvirtd: a Qcow2 host (Nova's default) whose
    instances are moved by one ``migrate --all``, killed in the middle of the second
    instance and resumed; then nova.conf says flat and audit finds nothing Nova would
    misread."""
    node.strict = True
    node.conf.write_text(node.conf.read_text().replace("images_type = flat", ""))
    uuids = [_make_instance(node, root="qcow2", data_mib=2, local_mib=0) for _ in range(3)]
    before = {u: guest_sha(node.instances / u / "disk", "qcow2", tmp_path) for u in uuids}
    res = node.cli("migrate", "--all", "--to", "flat", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "3 instance(s) to move" in res.stdout and "[libvirt] images_type = flat" in res.stdout
    res = node.killed("migrate", "--all", "--to", "flat", "--yes", fault="copy:after")
    assert res.returncode == -signal.SIGKILL, res.stderr
    journal = node.root / "storagectl-host-migration.json"
    assert journal.exists()
    res = node.cli("migrate", "--status")
    assert "host conversion to flat" in res.stdout and "interrupted" in res.stdout
    res = node.cli("migrate", "--resume", "--all", "--yes")
    assert res.returncode == 0, res.stderr
    assert "3 instance(s) moved" in res.stdout and not journal.exists()
    for u in uuids:
        assert domain_disk(node, u, "vda") == (str(node.instances / u / "disk"), "raw")
        assert guest_sha(node.instances / u / "disk", "raw", tmp_path) == before[u]
        assert leftovers(node, u) == []
    node.flip([("libvirt", "images_type", "flat")])
    assert serious(node, *uuids) == []
