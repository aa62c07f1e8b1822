"""storagectl migrate from a ploop disk (Nova's ``images_type = ploop``) to flat and qcow2.

Nova's Ploop backend writes ``<disk type='file'>`` with ``<driver type='ploop'>`` and a
``<source file>`` naming the directory ``<instances_path>/<uuid>/disk``, which holds the
image ``root.hds`` and ploop's ``DiskDescriptor.xml``. The test builds exactly that with
``qemu-img convert -O parallels`` (qemu calls the ploop "expanded" format parallels), and
the real libvirtd's QEMU driver accepts such a domain at define time (it could not start
it: QEMU's parallels driver is read-only - a shut-off instance is all migrate needs).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.env.libvirtd import Libvirtd
from tests.migrate_support import (
    CLEAN_INSTANCE_DIR,
    Node,
    dir_names,
    disk_element,
    guest_sha,
    guest_view,
    leftovers,
    make_instance,
    new_node,
    sh,
    snapshot,
    without_disk,
)


@pytest.fixture
def node(libvirtd: Libvirtd, libvirt_workdir: Path) -> Node:
    return new_node(libvirtd, libvirt_workdir)


def ploop_instance(node: Node) -> str:
    """root: a 16 MiB ploop directory holding 3 MiB of data; disk.local: 4 MiB raw."""
    return make_instance(node, root="ploop", size_mib=16, data_mib=3, local_mib=4)


def image_format(path: Path) -> dict:
    return json.loads(sh("qemu-img", "info", "--output=json", str(path)).stdout)


def test_ploop_source_as_nova_describes_it(node: Node) -> None:
    uuid = ploop_instance(node)
    d = node.instances / uuid
    el = disk_element(node, uuid, "vda")
    assert "type='ploop'" in el and f"<source file='{d / 'disk'}'/>" in el
    assert image_format(d / "disk" / "root.hds")["format"] == "parallels"
    disk = node.record(uuid)["disks"][0]
    assert (disk["name"], disk["backend"], disk["format"]) == ("disk", "ploop", "ploop")
    assert disk["virtual_size"] == 16 << 20
    inst = json.loads(node.run("inspect", "-o", "json", uuid).stdout)["instances"][0]
    assert inst["findings"] == [], inst


def test_ploop_to_flat_keeps_the_directory(node: Node, tmp_path: Path) -> None:
    uuid = ploop_instance(node)
    d = node.instances / uuid
    before_sha, before_xml = guest_view(node, uuid, tmp_path), node.xml(uuid)
    res = node.cli("migrate", uuid, "--to", "flat", "--yes")
    assert res.returncode == 0, res.stderr
    # the guest sees the same bytes, now from a raw file under the same Nova name
    assert (d / "disk").is_file() and image_format(d / "disk")["format"] == "raw"
    assert guest_view(node, uuid, tmp_path) == before_sha
    el = disk_element(node, uuid, "vda")
    assert "type='raw'" in el and f"<source file='{d / 'disk'}'/>" in el
    assert without_disk(node.xml(uuid), "vda") == without_disk(before_xml, "vda")
    # the ploop directory is kept whole, and is still the original data
    kept = d / "disk.retained-ploop"
    assert dir_names(kept) == ["DiskDescriptor.xml", "root.hds"]
    assert guest_sha(kept / "root.hds", "parallels", tmp_path) == before_sha
    rec = node.record(uuid)
    assert [(x["name"], x["backend"], x["format"]) for x in rec["disks"]] == [
        ("disk", "flat", "raw"),
        ("disk.local", "flat", "raw"),
    ]
    assert [(r["backend"], r["path"]) for r in rec["retained_sources"]] == [("ploop", str(kept))]
    assert json.loads((d / "disk.info").read_text())[str(d / "disk")] == "raw"
    assert not (d / "storage.migration.json").exists() and leftovers(node, uuid) == []
    inst = json.loads(node.run("inspect", "-o", "json", uuid).stdout)["instances"][0]
    assert inst["source"] == "metadata" and inst["findings"] == [], inst
    # later, the operator drops the kept directory: removed whole, the record forgets it
    res = node.cli("migrate", "--delete-retained", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert not kept.exists() and node.record(uuid)["retained_sources"] == []
    assert guest_view(node, uuid, tmp_path) == before_sha


def test_ploop_to_standalone_qcow2_deleting_the_source(node: Node, tmp_path: Path) -> None:
    uuid = ploop_instance(node)
    d = node.instances / uuid
    before_sha = guest_view(node, uuid, tmp_path)
    res = node.cli("migrate", uuid, "--to", "qcow2", "--disks", "root", "--delete-source", "--yes")
    assert res.returncode == 0, res.stderr
    info = image_format(d / "disk")
    assert info["format"] == "qcow2" and "backing-filename" not in info, info
    assert "type='qcow2'" in disk_element(node, uuid, "vda")
    assert guest_view(node, uuid, tmp_path) == before_sha
    assert node.record(uuid)["retained_sources"] == []
    assert dir_names(d) == CLEAN_INSTANCE_DIR


@pytest.mark.parametrize(
    ("fault", "how"),
    [("copy:after", "resume"), ("switch:before", "rollback"), ("switch:after", "rollback")],
)
def test_ploop_killed_then_resume_or_rollback(
    node: Node, tmp_path: Path, fault: str, how: str
) -> None:
    """``switch:after`` + rollback brings the directory back under its name (it cannot
    be hard-linked like a file source)."""
    uuid = ploop_instance(node)
    d = node.instances / uuid
    before_sha, before = guest_view(node, uuid, tmp_path), snapshot(node, uuid)
    res = node.killed("migrate", uuid, "--to", "flat", "--disks", "root", "--yes", fault=fault)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert guest_view(node, uuid, tmp_path) == before_sha
    res = node.run("migrate", f"--{how}", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert not (d / "storage.migration.json").exists() and leftovers(node, uuid) == []
    assert guest_view(node, uuid, tmp_path) == before_sha
    if how == "rollback":
        assert snapshot(node, uuid) == before
        assert (d / "disk" / "root.hds").is_file()
    else:
        assert "type='raw'" in disk_element(node, uuid, "vda")
        assert (d / "disk.retained-ploop" / "root.hds").is_file()
