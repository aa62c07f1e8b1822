"""inspect -> persist -> audit on RBD instances, against the real Ceph cluster."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from click.testing import CliRunner

from storagectl.cli import cli
from storagectl.model import naming
from tests.env.ceph import hold_open, rbd_sandbox
from tests.flowcheck import (
    assert_inspect_matches_manifest,
    assert_only_predicted_misreads,
    run,
    run_json,
)

MiB = 1 << 20


@pytest.fixture(scope="module")
def node(ceph_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("flow-rbd") / "node"
    with rbd_sandbox(
        ceph_cluster, root, instances=4, seed=31, kinds=("rbd", "flat"), also_remove=("99999999-",)
    ) as (sandbox, rbd):
        yield sandbox, rbd, ceph_cluster


def test_rbd_instances_are_discovered_from_the_cluster(node):
    sandbox, _, _ = node
    code, data = run_json(sandbox, "inspect")
    assert code == 0
    assert_inspect_matches_manifest(sandbox, data, source="inferred")
    assert any(d["backend"] == "rbd" for i in data["instances"] for d in i["disks"])


def test_ceph_unreachable_is_reported_not_guessed(node, tmp_path):
    sandbox, _, _ = node
    conf = sandbox.nova_conf.read_text()
    dead = tmp_path / "dead.conf"
    dead.write_text("[global]\nmon host = 127.0.0.1:1\n")
    broken = tmp_path / "nova.conf"
    broken.write_text(conf + f"\n[libvirt]\nimages_rbd_ceph_conf = {dead}\n")
    # (before persist: once recorded, the record's own ceph conf is used instead)
    res = CliRunner().invoke(
        cli,
        [
            "-c",
            sandbox.uri,
            "--nova-conf",
            str(sandbox.nova_conf),
            "--nova-conf",
            str(broken),
            "--log-file",
            str(tmp_path / "log"),
            "inspect",
            "-o",
            "json",
        ],
    )
    assert res.exit_code == 0
    findings = [f for i in json.loads(res.stdout)["instances"] for f in i["findings"]]
    # (what Nova would open is the manifest's, whether Ceph answers or not)
    findings = [f for f in findings if f["code"] != "nova-would-misread"]
    assert findings and all(f["code"] == "content-not-inspected" for f in findings)
    assert all("Ceph" in f["message"] or "ceph" in f["message"] for f in findings)


def test_persist_sets_image_meta_then_audit_catches_orphans_and_resize_leftovers(node):
    sandbox, rbd, cluster = node
    code, data = run_json(sandbox, "persist", "--all")
    assert code == 0 and {i["status"] for i in data["instances"]} == {"written"}
    rbd_disks = [(i, d) for i in sandbox.instances for d in i.disks if d.backend == "rbd"]
    for inst, disk in rbd_disks:
        meta = rbd.get_meta(disk.image)
        assert meta["storagectl.instance"] == inst.uuid
        assert meta["storagectl.disk"] == disk.name
        assert meta["storagectl.schema"] == "1"
    code, data = run_json(sandbox, "audit")
    # recorded, and still stored as Nova (qcow2) would not open them: nothing else
    assert code == 2
    assert_only_predicted_misreads(sandbox, data["findings"])
    # An image left behind by a deleted instance, a nova-resize snapshot left on a live
    # instance's root, and image-meta changed behind the record's back.
    orphan = naming.rbd_image_name("99999999-8888-7777-6666-555555555555", "disk")
    rbd.create(orphan, 4 * MiB)
    inst, root = next((i, d) for i, d in rbd_disks if d.name == "disk")
    cluster.rbd("snap", "create", f"{cluster.pool}/{root.image}@nova-resize")
    inst2, other = rbd_disks[-1]
    rbd.set_meta(other.image, "storagectl.disk", "disk.bogus")
    code, data = run_json(sandbox, "audit")
    assert code == 2
    orphans = [f for f in data["findings"] if f["code"] == "orphan-volume"]
    assert any(f["instance"] == inst.uuid and "nova-resize" in f["message"] for f in orphans)
    drift = [f for f in data["findings"] if f["code"] == "metadata-drift"]
    assert [(f["instance"], f["disk"]) for f in drift] == [(inst2.uuid, other.name)]
    code, out, err = run(sandbox, "audit", "--quiet")
    assert code == 2 and "orphan-volume" in out

    # The pool is shared by every compute host: an image of an instance this host has no
    # trace of is counted, not reported; --complete (all hosts scanned) reports it, and so
    # does a plain audit once this host has the instance's directory (a delete that
    # failed half-way).
    assert not any(orphan in f["message"] for f in orphans)
    (unowned,) = [f for f in data["findings"] if f["code"] == "unowned-volumes"]
    assert unowned["severity"] == "info" and f"in pool {cluster.pool}" in unowned["message"]
    code, data = run_json(sandbox, "audit", "--complete")
    orphans = [f for f in data["findings"] if f["code"] == "orphan-volume"]
    assert any(orphan in f["message"] for f in orphans)
    assert not [f for f in data["findings"] if f["code"] == "unowned-volumes"]
    gone = "99999999-8888-7777-6666-555555555555"
    left = sandbox.instances_path / gone
    left.mkdir()
    try:
        code, data = run_json(sandbox, "audit")
        assert code == 2  # the drift above
        found = {f["message"] for f in data["findings"] if f["code"] == "orphan-volume"}
        assert any(orphan in m for m in found) and any(str(left) in m for m in found)

        # ... but never while a client has the image open (rbd status)
        holder = hold_open(cluster.qemu_uri(orphan), lambda: bool(rbd.watchers(orphan)), ms=8000)
        try:
            code, data = run_json(sandbox, "audit")
        finally:
            holder.wait(timeout=60)  # qemu-io closes the image itself: no stale watch
        found = {f["message"] for f in data["findings"] if f["code"] == "orphan-volume"}
        assert not any(orphan in m for m in found)
        (unowned,) = [f for f in data["findings"] if f["code"] == "unowned-volumes"]
        assert "1 open by a client" in unowned["message"]

        # A directory recorded as another host's (a shared instances_path) is no trace
        # of this host's: its image is that host's, not an orphan here.
        record = (sandbox.instances_path / inst.uuid / "storage.yaml").read_text()
        host = yaml.safe_load(record)["instance"]["host"]
        (left / "storage.yaml").write_text(
            record.replace(inst.uuid, gone).replace(f"host: {host}", "host: cn-elsewhere-17")
        )
        code, data = run_json(sandbox, "audit")
        assert code == 2
        found = {f["message"] for f in data["findings"] if f["code"] == "orphan-volume"}
        assert not any(orphan in m or str(left) in m for m in found)
        assert any(f["code"] == "unowned-volumes" for f in data["findings"])
    finally:
        shutil.rmtree(left)
