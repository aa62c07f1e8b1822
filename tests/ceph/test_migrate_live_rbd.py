"""Live moves (issue #16) between files and Ceph RBD: a running firmware-only guest on the
real libvirtd, the real single-node cluster, the guest's cephx key in a libvirt secret
(as Nova's hosts have it), guest writes through QEMU's block layer during the mirror.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.env.ceph import CephCluster
from tests.env.libvirtd import Libvirtd
from tests.migrate_support import (
    LIVE_STEPS,
    SECRET,
    Node,
    disk_element,
    domain_disk,
    hmp_write,
    images,
    live_disk,
    make_instance,
    new_node,
    nova_after,
    read_pattern,
    start,
    wait_while_running,
)

STARTED: list[str] = []


def define_secret(libvirtd: Libvirtd, cluster: CephCluster) -> None:
    """The cephx key of the cluster's user in the libvirt secret the disks name."""
    conn = libvirtd.connect()
    key = re.search(r"key\s*=\s*(\S+)", cluster.keyring.read_text()).group(1)
    with contextlib.suppress(libvirt.libvirtError):
        conn.secretLookupByUUIDString(SECRET).undefine()
    secret = conn.secretDefineXML(
        f"<secret ephemeral='no' private='no'><uuid>{SECRET}</uuid>"
        f"<usage type='ceph'><name>client.{cluster.user} storagectl-test</name></usage></secret>"
    )
    secret.setValue(base64.b64decode(key))


@pytest.fixture
def node(libvirtd: Libvirtd, libvirt_workdir: Path, ceph_cluster: CephCluster) -> Iterator[Node]:
    define_secret(libvirtd, ceph_cluster)
    yield new_node(libvirtd, libvirt_workdir, ceph_cluster)
    conn = libvirtd.connect()
    while STARTED:
        with contextlib.suppress(libvirt.libvirtError):
            dom = conn.lookupByUUIDString(STARTED.pop())
            if dom.isActive():
                dom.destroy()


def running(node: Node, root: str, **kw) -> str:
    uuid = make_instance(node, root=root, local_mib=None, **kw)
    start(node, uuid)
    STARTED.append(uuid)
    return uuid


def journal_step(node: Node, uuid: str) -> str | None:
    try:
        return json.loads((node.instances / uuid / "storage.migration.json").read_text())["step"]
    except (FileNotFoundError, ValueError):
        return None


@pytest.mark.parametrize("root", ["qcow2", "flat"])
def test_a_running_file_guest_moves_live_into_the_pool(node: Node, root: str) -> None:
    cluster = node.cluster
    uuid = running(node, root, data_mib=6)
    args = ("migrate", uuid, "--to", "rbd", "--yes", "--bwlimit", "1", "--secret-uuid", SECRET)
    proc = node.spawn(*args)
    wait_while_running(proc, lambda: journal_step(node, uuid) == "ready", timeout=60)
    hmp_write(node, uuid, "vda", 0x21, "3M", "64k")  # during the mirror
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    node.flip(nova_after(args))  # as Node.cli does once a conversion is done
    hmp_write(node, uuid, "vda", 0x31, "4M", "64k")  # after the pivot
    image = f"{uuid}_disk"
    assert live_disk(node, uuid, "vda") == (f"{cluster.pool}/{image}", "raw")
    el = disk_element(node, uuid)
    assert f"name='{cluster.pool}/{image}'" in el and f"uuid='{SECRET}'" in el
    assert node.record(uuid)["disks"][0]["backend"] == "rbd"
    uri = cluster.qemu_uri(image)
    assert read_pattern(uri, "raw", 0x21, "3M", "64k", shared=False)
    assert read_pattern(uri, "raw", 0x31, "4M", "64k", shared=False)
    data = (5, "0") if root == "qcow2" else (7, "1M")
    assert read_pattern(uri, "raw", data[0], data[1], "1M", shared=False)
    res = node.run("audit", "-o", "json")
    bad = [
        f
        for f in json.loads(res.stdout)["findings"]
        if f.get("instance") == uuid and f["severity"] in ("warning", "critical")
    ]
    assert bad == []


@pytest.mark.parametrize("to", ["flat", "qcow2"])
def test_a_running_rbd_guest_moves_live_out_of_the_pool(node: Node, to: str) -> None:
    uuid = running(node, "rbd")
    d = node.instances / uuid
    hmp_write(node, uuid, "vda", 0x41, "2M", "64k")
    res = node.cli("migrate", uuid, "--to", to, "--yes")
    assert res.returncode == 0, res.stderr
    fmt = "raw" if to == "flat" else "qcow2"
    assert live_disk(node, uuid, "vda") == (str(d / "disk"), fmt)  # no alias: a new name
    assert domain_disk(node, uuid, "vda") == (str(d / "disk"), fmt)
    hmp_write(node, uuid, "vda", 0x42, "6M", "64k")
    node.libvirtd.connect().lookupByUUIDString(uuid).destroy()
    for pattern, offset in ((0x41, "2M"), (0x42, "6M"), (7, "1M")):
        assert read_pattern(d / "disk", fmt, pattern, offset, "64k", shared=False)
    assert images(node.cluster, uuid) == [f"{uuid}_disk"]  # retained, as offline


def test_the_rbd_target_stays_thin(node: Node) -> None:
    """256 MiB virtual, 8 MiB of data: the image holds about the data, not the zeros."""
    uuid = running(node, "flat", size_mib=256, data_mib=8)
    res = node.cli("migrate", uuid, "--to", "rbd", "--yes", "--secret-uuid", SECRET)
    assert res.returncode == 0, res.stderr
    du = json.loads(node.cluster.rbd("du", "--format", "json", f"{node.cluster.pool}/{uuid}_disk"))
    used = du["images"][0]["used_size"]
    assert used <= 24 << 20, du


ALL = [f"{s}:{p}" for s in LIVE_STEPS for p in ("before", "after")]
BEFORE_PIVOT = ALL[: ALL.index("pivot:after")]  # up to and with pivot:before


@pytest.mark.parametrize("fault", ALL)
def test_kill_9_during_a_live_move_into_the_pool_then_resume(node: Node, fault: str) -> None:
    uuid = running(node, "flat")
    res = node.killed("migrate", uuid, "--to", "rbd", "--yes", "--secret-uuid", SECRET, fault=fault)
    assert res.returncode == -9, res.stderr
    hmp_write(node, uuid, "vda", 0x51, "5M", "64k")
    if fault not in BEFORE_PIVOT:  # the guest writes to the image: forward only
        res = node.cli("migrate", "--rollback", uuid, "--yes")
        assert res.returncode == 1 and "pivoted" in res.stderr, res.stderr
    res = node.cli("migrate", "--resume", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    image = f"{uuid}_disk"
    assert live_disk(node, uuid, "vda") == (f"{node.cluster.pool}/{image}", "raw")
    assert read_pattern(node.cluster.qemu_uri(image), "raw", 0x51, "5M", "64k", shared=False)


@pytest.mark.parametrize("fault", BEFORE_PIVOT)
def test_kill_9_during_a_live_move_into_the_pool_then_rollback(node: Node, fault: str) -> None:
    uuid = running(node, "flat")
    d = node.instances / uuid
    res = node.killed("migrate", uuid, "--to", "rbd", "--yes", "--secret-uuid", SECRET, fault=fault)
    assert res.returncode == -9, res.stderr
    hmp_write(node, uuid, "vda", 0x61, "5M", "64k")
    res = node.cli("migrate", "--rollback", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert live_disk(node, uuid, "vda") == (str(d / "disk"), "raw")
    assert images(node.cluster, uuid) == []
    assert read_pattern(d / "disk", "raw", 0x61, "5M", "64k")
