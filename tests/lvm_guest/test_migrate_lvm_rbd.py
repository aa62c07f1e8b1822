"""lvm <-> rbd end to end: device-mapper, a Ceph cluster and a libvirtd in one place.

Only the virtme-ng guest has device-mapper, so the tier's guest also runs the same
single-node Ceph cluster the host tiers use (tests/env/ceph.py; its timeouts are
stretched by ``STORAGECTL_TEST_TIME_FACTOR``, which tests/lvm_guest/conftest.py sets for
TCG). One instance goes from a Nova LVM root to an RBD image and back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.env.ceph import CephCluster
from tests.env.libvirtd import Libvirtd
from tests.env.lvm import LvmEnv
from tests.lvm_guest.test_migrate_lvm import instance_lvs, lv_path, lvm_instance
from tests.migrate_support import (
    Node,
    disk_element,
    guest_sha,
    guest_view,
    images,
    new_node,
    without_disk,
)

CEPH_TIMEOUT = "120"  # librados timeouts for migrate's rbd commands under TCG


@pytest.fixture
def rbd_node(
    libvirtd: Libvirtd,
    libvirt_workdir: Path,
    guest_vg: LvmEnv,
    ceph_cluster: CephCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> Node:
    """A node whose nova.conf names the guest VG and the guest's Ceph pool."""
    for key in ("LVM_SYSTEM_DIR", "LVM_SUPPRESS_FD_WARNINGS"):
        monkeypatch.setenv(key, guest_vg.env[key])
    return new_node(
        libvirtd,
        libvirt_workdir,
        ceph_cluster,
        libvirt_conf=f"images_volume_group = {guest_vg.vg}\n",
    )


def test_lvm_root_to_rbd_and_back(rbd_node: Node, guest_vg: LvmEnv, tmp_path: Path) -> None:
    node, cluster = rbd_node, rbd_node.cluster
    uuid = lvm_instance(node, guest_vg)
    lv = lv_path(guest_vg, uuid)
    image = f"{uuid}_disk"
    before_sha, before_xml = guest_sha(lv, "raw", tmp_path), node.xml(uuid)

    res = node.run("migrate", uuid, "--to", "rbd", "--yes", "--ceph-timeout", CEPH_TIMEOUT)
    assert res.returncode == 0, res.stderr
    el = disk_element(node, uuid, "vda")
    assert "<disk type='network'" in el and f"name='{cluster.pool}/{image}'" in el
    assert without_disk(node.xml(uuid), "vda") == without_disk(before_xml, "vda")
    assert images(cluster, uuid) == [image]
    assert guest_view(node, uuid, tmp_path) == before_sha
    # the LV is kept, recorded as retained, until --delete-retained
    assert instance_lvs(guest_vg, uuid) == {Path(lv).name}
    rec = node.record(uuid)
    assert [(d["backend"], d["location"]["image"]) for d in rec["disks"]] == [("rbd", image)]
    assert [r["backend"] for r in rec["retained_sources"]] == ["lvm"]
    inst = json.loads(node.run("inspect", "-o", "json", uuid).stdout)["instances"][0]
    assert inst["source"] == "metadata" and inst["findings"] == [], inst
    res = node.run("migrate", "--delete-retained", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert instance_lvs(guest_vg, uuid) == set()

    # back onto a (new, thick) LV, deleting the RBD image once switched
    res = node.run(
        "migrate", uuid, "--to", "lvm", "--yes", "--delete-source", "--ceph-timeout", CEPH_TIMEOUT
    )
    assert res.returncode == 0, res.stderr
    el = disk_element(node, uuid, "vda")
    assert "<disk type='block'" in el and f"<source dev='{lv}'" in el
    assert guest_sha(lv, "raw", tmp_path) == before_sha
    assert images(cluster, uuid) == []
    assert without_disk(node.xml(uuid), "vda") == without_disk(before_xml, "vda")
    rec = node.record(uuid)
    assert [(d["backend"], d["location"]["volume"]) for d in rec["disks"]] == [
        ("lvm", Path(lv).name)
    ]
    assert rec["retained_sources"] == []
