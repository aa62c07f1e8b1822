"""storagectl migrate flat <-> rbd: the real Ceph test cluster and the real libvirtd.

The instances are defined shut off in libvirtd (an rbd disk needs no secret to be
defined, only to start), persisted through the CLI, and migrated by the CLI in a
subprocess so that the test-only ``STORAGECTL_FAULT`` hook can SIGKILL it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.env.ceph import CephCluster, daemon_pids_for_conf, free_port, start_cluster
from tests.env.libvirtd import Libvirtd
from tests.env.procs import cmdline, processes
from tests.migrate_support import (
    SECRET,
    STEPS,
    Node,
    disk_element,
    guest_view,
    images,
    new_node,
    sh,
    snapshot,
    wait_while_running,
    without_disk,
)
from tests.migrate_support import make_instance as _make_instance


@pytest.fixture
def node(libvirtd: Libvirtd, libvirt_workdir: Path, ceph_cluster: CephCluster) -> Node:
    return new_node(libvirtd, libvirt_workdir, ceph_cluster)


def make_instance(node: Node, *, on_rbd: bool) -> str:
    """A persisted, shut-off instance: root flat (or on RBD) with 3 MiB of data."""
    return _make_instance(
        node, root="rbd" if on_rbd else "flat", size_mib=16, data_mib=3, local_mib=None
    )


def vda(node: Node, uuid: str) -> str:
    return disk_element(node, uuid, "vda")


def state(node: Node, uuid: str) -> dict:
    return snapshot(node, uuid)


def test_flat_to_rbd_and_back(node: Node, tmp_path: Path) -> None:
    cluster = node.cluster
    uuid = make_instance(node, on_rbd=False)
    d = node.instances / uuid
    before_sha, before_xml = guest_view(node, uuid, tmp_path), node.xml(uuid)
    res = node.cli("migrate", uuid, "--to", "rbd", "--yes", "--secret-uuid", SECRET)
    assert res.returncode == 0, res.stderr
    el = vda(node, uuid)
    assert "type='network'" in el and f"name='{cluster.pool}/{uuid}_disk'" in el
    assert f"uuid='{SECRET}'" in el and f"username='{cluster.user}'" in el
    assert f"port='{cluster.port}'" in el  # from ceph mon dump
    assert without_disk(node.xml(uuid), "vda") == without_disk(before_xml, "vda")
    assert guest_view(node, uuid, tmp_path) == before_sha
    rec = node.record(uuid)
    assert rec["disks"][0]["backend"] == "rbd"
    assert rec["disks"][0]["location"] == {
        "pool": cluster.pool,
        "image": f"{uuid}_disk",
        "ceph_conf": str(cluster.conf),
        "user": cluster.user,
    }
    assert rec["retained_sources"][0]["path"] == str(d / "disk")
    meta = json.loads(
        cluster.rbd("image-meta", "list", "--format", "json", f"{cluster.pool}/{uuid}_disk")
    )
    assert meta["storagectl.instance"] == uuid and meta["storagectl.disk"] == "disk"
    assert json.loads((d / "disk.info").read_text()) == {f"rbd:{cluster.pool}/{uuid}_disk": "raw"}
    res = node.run("inspect", "-o", "json", uuid)
    assert json.loads(res.stdout)["instances"][0]["findings"] == []
    # and back: rbd -> flat; the flat file kept by the first migration is in the way
    res = node.cli("migrate", uuid, "--to", "flat", "--dry-run")  # moved aside (#20)
    assert res.returncode == 0 and f"renamed to {d / 'disk.retained-flat-1'}" in res.stdout
    res = node.run("migrate", "--delete-retained", uuid, "--yes")
    assert res.returncode == 0 and str(d / "disk") in res.stdout
    res = node.cli("migrate", uuid, "--to", "flat", "--yes", "--delete-source")
    assert res.returncode == 0, res.stderr
    assert without_disk(node.xml(uuid), "vda") == without_disk(before_xml, "vda")
    assert "type='file'" in vda(node, uuid) and "<auth" not in vda(node, uuid)
    assert guest_view(node, uuid, tmp_path) == before_sha
    assert images(cluster, uuid) == []
    assert node.record(uuid)["retained_sources"] == []


@pytest.mark.parametrize("direction", ["flat-to-rbd", "rbd-to-flat"])
@pytest.mark.parametrize("fault", [f"{s}:{p}" for s in STEPS for p in ("before", "after")])
def test_kill_at_every_boundary(node: Node, tmp_path: Path, direction: str, fault: str) -> None:
    """Killed at the boundary: rollback restores the original; killed again: resume ends."""
    to_rbd = direction == "flat-to-rbd"
    uuid = make_instance(node, on_rbd=not to_rbd)
    d = node.instances / uuid
    before_sha, before = guest_view(node, uuid, tmp_path), state(node, uuid)
    argv = ["migrate", uuid, "--to", "rbd" if to_rbd else "flat", "--yes"]
    for how in ("rollback", "resume"):
        res = node.killed(*argv, fault=fault)
        assert res.returncode == -signal.SIGKILL, res.stderr
        assert guest_view(node, uuid, tmp_path) == before_sha
        res = node.run("migrate", f"--{how}", uuid, "--yes")
        assert res.returncode == 0, res.stderr
        assert not (d / "storage.migration.json").exists()
        assert guest_view(node, uuid, tmp_path) == before_sha
        if how == "rollback":
            assert state(node, uuid) == before
    after = state(node, uuid)
    assert without_disk(after["xml"], "vda") == without_disk(before["xml"], "vda")
    assert node.record(uuid)["disks"][0]["backend"] == ("rbd" if to_rbd else "flat")
    # nothing leaked: exactly the source (retained) and the target exist
    assert after["images"] == [f"{uuid}_disk"]
    assert ("disk" in after["files"]) is True
    assert not [f for f in after["files"] if f.endswith((".migrating", ".rollback"))]


def test_ceph_unreachable_is_refused(node: Node, tmp_path: Path) -> None:
    cluster = node.cluster
    uuid = make_instance(node, on_rbd=False)
    before = state(node, uuid)
    dead = tmp_path / "dead.conf"
    dead.write_text(
        cluster.conf.read_text().replace(f"127.0.0.1:{cluster.port}", f"127.0.0.1:{free_port()}")
    )
    node.conf.write_text(node.conf.read_text().replace(str(cluster.conf), str(dead)))
    started = time.monotonic()
    res = node.run("migrate", uuid, "--to", "rbd", "--yes", "--ceph-timeout", "3")
    assert res.returncode == 1 and "Ceph is unreachable" in res.stderr, res.stderr
    assert time.monotonic() - started < 30
    node.conf.write_text(node.conf.read_text().replace(str(dead), str(cluster.conf)))
    assert state(node, uuid) == before


@pytest.fixture
def own_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A cluster of its own: stopping its OSD must not disturb the session's cluster."""
    cluster = start_cluster(tmp_path_factory.mktemp("ceph-dying"))
    try:
        yield cluster
    finally:
        cluster.stop()


def test_ceph_dying_mid_copy(node: Node, tmp_path: Path, own_cluster: CephCluster) -> None:
    """The OSD stops answering (SIGSTOP) during a rate-limited copy to RBD: the copy
    fails within --ceph-timeout; once Ceph answers again no image is left, and the source,
    the domain and the record are untouched."""
    shared = node.cluster
    cluster = node.ceph = own_cluster
    node.conf.write_text(node.conf.read_text().replace(str(shared.conf), str(cluster.conf)))
    uuid = make_instance(node, on_rbd=False)
    d = node.instances / uuid
    sh("qemu-io", "-f", "raw", "-c", "write -P 4 4M 12M", str(d / "disk"))
    before_sha, before = guest_view(node, uuid, tmp_path), state(node, uuid)
    osds = [p for p in daemon_pids_for_conf(cluster.conf) if "ceph-osd" in " ".join(cmdline(p))]
    assert osds, "no ceph-osd process found for the test cluster"
    proc = node.spawn(
        "migrate", uuid, "--to", "rbd", "--yes", "--bwlimit", "2", "--ceph-timeout", "3"
    )
    try:
        wait_while_running(proc, lambda: f"{uuid}_disk" in images(cluster, uuid))
        time.sleep(0.5)  # the copy is under way
        for pid in osds:
            os.kill(pid, signal.SIGSTOP)
        out, err = proc.communicate(timeout=120)
    finally:
        for pid in osds:
            os.kill(pid, signal.SIGCONT)
    assert proc.returncode == 1, (out, err)
    assert "failed at copy" in err
    # After SIGCONT the OSD may first have to rejoin the map before it serves again.
    deadline = time.monotonic() + 240
    while True:
        try:
            cluster.rbd("info", f"{cluster.pool}/{uuid}_disk", timeout=20)
            break
        except Exception as exc:  # noqa: BLE001 - gone (rolled back) or not answering yet
            if "No such file" in str(exc):
                break
            assert time.monotonic() < deadline, f"the cluster did not come back: {exc}"
            time.sleep(1)
    if (d / "storage.migration.json").exists():  # the rollback could not reach Ceph either
        assert "--rollback" in err
        res = node.run("migrate", "--rollback", uuid, "--yes")
        assert res.returncode == 0, res.stderr
    assert state(node, uuid) == before
    assert guest_view(node, uuid, tmp_path) == before_sha


def copy_processes(needle: str) -> list[int]:
    """Pids of the qemu-img processes whose command line names ``needle``."""
    return [
        pid
        for pid, argv in processes()
        if argv[0].endswith("qemu-img") and any(needle in a for a in argv)
    ]


@pytest.mark.parametrize("then", ["--rollback", "--resume"])
def test_kill_9_mid_copy(node: Node, tmp_path: Path, then: str) -> None:
    """storagectl is SIGKILLed (the real signal, not the fault hook) while qemu-img is
    writing the RBD image. Its qemu-img dies with it (PR_SET_PDEATHSIG) instead of writing
    on behind the next command's back, and both ways forward work although the dead
    writer's watch and exclusive lock stay on the image until the OSD expires the watch
    (~30 s): ``rbd rm`` blocks until it can break that lock. (A dead client that held no
    lock makes ``rbd rm`` refuse instead, which RBD.remove waits out:
    tests/ceph/test_backend_rbd.py.)"""
    cluster = node.cluster
    uuid = make_instance(node, on_rbd=False)
    d = node.instances / uuid
    sh("qemu-io", "-f", "raw", "-c", "write -P 5 4M 12M", str(d / "disk"))
    before_sha, before = guest_view(node, uuid, tmp_path), state(node, uuid)
    proc = node.spawn("migrate", uuid, "--to", "rbd", "--yes", "--bwlimit", "2")
    image = f"{uuid}_disk"
    wait_while_running(proc, lambda: bool(copy_processes(image)))
    time.sleep(0.5)  # the copy is under way
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 2
    while left := copy_processes(image):
        assert time.monotonic() < deadline, f"qemu-img {left} still writes {image}"
        time.sleep(0.05)
    assert (d / "storage.migration.json").exists()
    stale = json.loads(cluster.rbd("status", "--format", "json", f"{cluster.pool}/{image}"))
    assert stale["watchers"], stale  # the killed writer's, until the OSD expires it

    res = node.run("migrate", then, uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert not (d / "storage.migration.json").exists()
    if then == "--rollback":
        assert state(node, uuid) == before
        assert images(cluster, uuid) == []
    else:
        assert "protocol='rbd'" in vda(node, uuid)
        assert images(cluster, uuid) == [image]
    assert guest_view(node, uuid, tmp_path) == before_sha


def test_a_qcow2_host_converted_to_rbd_then_nova_conf_set(node: Node, tmp_path: Path) -> None:
    """Issue #15 part 3 on the real cluster: every instance of a Qcow2 host (Nova's
    default) moved into the pool by one ``migrate --all --parallel 2``; the report names
    the nova.conf lines; once they are set, audit finds nothing Nova would misread."""
    node.strict = True
    node.conf.write_text(node.conf.read_text().replace("images_type = flat", ""))
    uuids = [
        _make_instance(node, root="qcow2", size_mib=16, data_mib=3, local_mib=4) for _ in range(3)
    ]
    before = {u: guest_view(node, u, tmp_path) for u in uuids}
    res = node.cli("migrate", "--all", "--to", "rbd", "--parallel", "2", "--secret-uuid", SECRET,
                   "--yes")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "3 instance(s) moved" in res.stdout and "set in nova.conf now" in res.stdout
    cluster = node.cluster
    for line in ("[libvirt] images_type = rbd", f"[libvirt] images_rbd_pool = {cluster.pool}"):
        assert line in res.stdout
    for u in uuids:
        assert f"rbd' name='{cluster.pool}/{u}_disk'" in vda(node, u).replace('"', "'")
        assert guest_view(node, u, tmp_path) == before[u]
        assert sorted(images(cluster, u)) == [f"{u}_disk", f"{u}_disk.local"]

    # before nova.conf says rbd, Nova (qcow2) would look for the files the move retained
    # (the shared libvirtd and pool hold other tests' instances: only these are looked at)
    def findings() -> list[dict]:
        res = node.cli("inspect", "-o", "json", *uuids)
        assert res.returncode == 0, res.stderr
        return [f for i in json.loads(res.stdout)["instances"] for f in i["findings"]]

    misread = {f["instance"] for f in findings() if f["code"] == "nova-would-misread"}
    assert misread == set(uuids)
    node.flip([("libvirt", "images_type", "rbd")])
    assert [f for f in findings() if f["severity"] != "info"] == []
