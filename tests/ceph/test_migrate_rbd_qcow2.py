"""storagectl migrate qcow2 <-> rbd: the real Ceph test cluster and the real libvirtd.

The qcow2 root sits on a raw ``_base`` image, as Nova makes it; going to RBD flattens the
chain into the image, and coming back makes a standalone qcow2 (no backing file). The
node's nova.conf names ``[libvirt] rbd_secret_uuid``: a domain without an rbd disk gets
its ``<auth>`` from there. Killed runs (``STORAGECTL_FAULT``) use a forked CLI.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.env.ceph import CephCluster
from tests.env.libvirtd import Libvirtd
from tests.migrate_support import (
    SECRET,
    Node,
    dir_names,
    disk_element,
    guest_view,
    images,
    leftovers,
    make_instance,
    new_node,
    sh,
    snapshot,
    without_disk,
)

#: nova.conf [libvirt] rbd_secret_uuid of this node (not the one test rbd disks carry).
NOVA_SECRET = "c0c0c0c0-9999-4888-8777-666666666666"


@pytest.fixture
def node(libvirtd: Libvirtd, libvirt_workdir: Path, ceph_cluster: CephCluster) -> Node:
    return new_node(
        libvirtd, libvirt_workdir, ceph_cluster, libvirt_conf=f"rbd_secret_uuid = {NOVA_SECRET}\n"
    )


def instance(node: Node, root: str) -> str:
    """root qcow2 (on a raw base) or rbd, 16 MiB with 3 MiB of data; no other disk."""
    return make_instance(node, root=root, size_mib=16, data_mib=3, local_mib=None)


def qemu_info(path: Path) -> dict:
    return json.loads(sh("qemu-img", "info", "--output=json", str(path)).stdout)


def test_qcow2_to_rbd_with_nova_conf_secret_and_back_to_standalone_qcow2(
    node: Node, tmp_path: Path
) -> None:
    cluster = node.cluster
    uuid = instance(node, "qcow2")
    d = node.instances / uuid
    assert "backing-filename" in qemu_info(d / "disk")
    before_sha, before_xml = guest_view(node, uuid, tmp_path), node.xml(uuid)
    res = node.cli("migrate", uuid, "--to", "rbd", "--yes")
    assert res.returncode == 0, res.stderr
    el = disk_element(node, uuid, "vda")
    assert "type='network'" in el and f"name='{cluster.pool}/{uuid}_disk'" in el
    assert "<driver name='qemu' type='raw'/>" in el and "backingStore" not in el
    # no rbd disk to borrow <auth> from and no --secret-uuid: nova.conf's secret and user
    assert f"<auth username='{cluster.user}'>" in el
    assert f"<secret type='ceph' uuid='{NOVA_SECRET}'/>" in el
    assert without_disk(node.xml(uuid), "vda") == without_disk(before_xml, "vda")
    assert guest_view(node, uuid, tmp_path) == before_sha
    assert images(cluster, uuid) == [f"{uuid}_disk"]
    rec = node.record(uuid)
    assert (rec["disks"][0]["backend"], rec["disks"][0]["format"]) == ("rbd", "raw")
    assert [(r["backend"], r["path"]) for r in rec["retained_sources"]] == [
        ("qcow2", str(d / "disk"))
    ]
    assert json.loads((d / "disk.info").read_text()) == {f"rbd:{cluster.pool}/{uuid}_disk": "raw"}
    assert leftovers(node, uuid) == []
    # back to qcow2: the retained qcow2 holds the name until --delete-retained
    res = node.run("migrate", "--delete-retained", uuid, "--yes")
    assert res.returncode == 0 and str(d / "disk") in res.stdout, res.stderr
    res = node.cli("migrate", uuid, "--to", "qcow2", "--yes", "--delete-source")
    assert res.returncode == 0, res.stderr
    info = qemu_info(d / "disk")
    assert info["format"] == "qcow2" and "backing-filename" not in info, info
    el = disk_element(node, uuid, "vda")
    assert "type='file'" in el and "type='qcow2'" in el and "<auth" not in el
    assert without_disk(node.xml(uuid), "vda") == without_disk(before_xml, "vda")
    assert guest_view(node, uuid, tmp_path) == before_sha
    assert images(cluster, uuid) == []
    assert node.record(uuid)["retained_sources"] == []
    assert dir_names(d) == ["disk", "disk.info", "storage.yaml"]


@pytest.mark.parametrize(
    ("direction", "fault", "how"),
    [
        ("qcow2-to-rbd", "copy:after", "resume"),
        ("qcow2-to-rbd", "switch:before", "rollback"),
        ("rbd-to-qcow2", "copy:after", "rollback"),
        ("rbd-to-qcow2", "switch:before", "resume"),
    ],
)
def test_killed_mid_migration(
    node: Node, tmp_path: Path, direction: str, fault: str, how: str
) -> None:
    cluster = node.cluster
    to_rbd = direction == "qcow2-to-rbd"
    uuid = instance(node, "qcow2" if to_rbd else "rbd")
    d = node.instances / uuid
    before_sha, before = guest_view(node, uuid, tmp_path), snapshot(node, uuid)
    to = "rbd" if to_rbd else "qcow2"
    res = node.killed("migrate", uuid, "--to", to, "--yes", fault=fault)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert guest_view(node, uuid, tmp_path) == before_sha  # a complete disk at the boundary
    assert (d / "storage.migration.json").exists()
    res = node.run("migrate", f"--{how}", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert not (d / "storage.migration.json").exists() and leftovers(node, uuid) == []
    assert guest_view(node, uuid, tmp_path) == before_sha
    after = snapshot(node, uuid)
    if how == "rollback":
        assert after == before
        return
    el = disk_element(node, uuid, "vda")
    assert without_disk(after["xml"], "vda") == without_disk(before["xml"], "vda")
    assert node.record(uuid)["disks"][0]["backend"] == to
    # nothing leaked: the target and the retained source, nothing else
    assert after["images"] == [f"{uuid}_disk"]
    if to_rbd:
        assert f"uuid='{NOVA_SECRET}'" in el and SECRET not in el
        assert f"name='{cluster.pool}/{uuid}_disk'" in el
        assert after["files"] == before["files"]  # the qcow2 source stays as it was
    else:
        info = qemu_info(d / "disk")
        assert info["format"] == "qcow2" and "backing-filename" not in info
        assert "type='qcow2'" in el and "<auth" not in el
        assert after["files"] == sorted([*before["files"], "disk"])
        assert node.record(uuid)["retained_sources"][0]["image"] == f"{uuid}_disk"
