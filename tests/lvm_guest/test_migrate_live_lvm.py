"""Live moves (issue #16) to and from LVM, for real: a running firmware-only guest (TCG,
inside the virtme-ng guest, which has device-mapper) on active LVs, its libvirtd, guest
writes through QEMU's block layer during the mirror, read back from the target.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import libvirt
import pytest

from tests.env.lvm import LvmEnv
from tests.lvm_guest.test_migrate_lvm import lv_path, lvm_instance, vda
from tests.migrate_support import (
    Node,
    hmp_write,
    live_disk,
    make_instance,
    read_pattern,
    start,
    wait_while_running,
)

SIZE_MIB = 32


@pytest.fixture
def started(node: Node) -> Iterator[list[str]]:
    uuids: list[str] = []
    yield uuids
    conn = node.libvirtd.connect()
    for uuid in uuids:  # a failed test's guest is not left running
        with contextlib.suppress(libvirt.libvirtError):
            dom = conn.lookupByUUIDString(uuid)
            if dom.isActive():
                dom.destroy()


def journal_step(node: Node, uuid: str) -> str | None:
    try:
        return json.loads((node.instances / uuid / "storage.migration.json").read_text())["step"]
    except (FileNotFoundError, ValueError):
        return None


def test_a_running_flat_guest_moves_live_to_lvm_and_back(
    node: Node, guest_vg: LvmEnv, started: list[str]
) -> None:
    uuid = make_instance(node, root="flat", size_mib=SIZE_MIB, data_mib=3, local_mib=None)
    d = node.instances / uuid
    start(node, uuid)
    started.append(uuid)
    proc = node.spawn("migrate", uuid, "--to", "lvm", "--yes", "--bwlimit", "1")
    wait_while_running(proc, lambda: journal_step(node, uuid) == "ready", timeout=300)
    hmp_write(node, uuid, "vda", 0x2A, "5M", "64k")  # during the mirror
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    node.flip([("libvirt", "images_type", "lvm")])
    lv = lv_path(guest_vg, uuid)
    assert live_disk(node, uuid, "vda") == (lv, "raw")
    assert vda(node, uuid) == ("block", lv, "raw")
    hmp_write(node, uuid, "vda", 0x3A, "6M", "64k")  # after the pivot
    for pattern, offset in ((0x2A, "5M"), (0x3A, "6M"), (7, "1M")):
        assert read_pattern(lv, "raw", pattern, offset, "64k"), hex(pattern)
    # and back to a file, live: the LV source is mirrored straight to Nova's name
    res = node.cli("migrate", uuid, "--to", "flat", "--yes", timeout=600)
    assert res.returncode == 0, res.stderr
    assert live_disk(node, uuid, "vda") == (str(d / "disk"), "raw")
    node.libvirtd.connect().lookupByUUIDString(uuid).destroy()
    for pattern, offset in ((0x2A, "5M"), (0x3A, "6M"), (7, "1M")):
        assert read_pattern(d / "disk", "raw", pattern, offset, "64k", shared=False)


def test_kill_9_mid_mirror_into_an_lv_then_resume_and_rollback(
    node: Node, guest_vg: LvmEnv, started: list[str]
) -> None:
    uuid = lvm_instance(node, guest_vg)
    node.flip([("libvirt", "images_type", "lvm")])
    start(node, uuid)
    started.append(uuid)
    lv = lv_path(guest_vg, uuid)
    # rollback: the guest stays on its LV, the target file is gone
    res = node.killed("migrate", uuid, "--to", "qcow2", "--yes", fault="mirror:after")
    assert res.returncode == -9, res.stderr
    res = node.cli("migrate", "--rollback", uuid, "--yes", timeout=600)
    assert res.returncode == 0, res.stderr
    assert live_disk(node, uuid, "vda") == (lv, "raw")
    assert not (node.instances / uuid / "disk").exists()
    # resume: the copy that ran on while storagectl was dead is finished and pivoted
    res = node.killed("migrate", uuid, "--to", "qcow2", "--yes", fault="ready:before")
    assert res.returncode == -9, res.stderr
    hmp_write(node, uuid, "vda", 0x4A, "7M", "64k")
    res = node.cli("migrate", "--resume", uuid, "--yes", timeout=600)
    assert res.returncode == 0, res.stderr
    d = node.instances / uuid
    assert live_disk(node, uuid, "vda") == (str(d / "disk"), "qcow2")
    node.libvirtd.connect().lookupByUUIDString(uuid).destroy()
    assert read_pattern(d / "disk", "qcow2", 0x4A, "7M", "64k", shared=False)
    assert read_pattern(d / "disk", "qcow2", 7, "1M", "1M", shared=False)
