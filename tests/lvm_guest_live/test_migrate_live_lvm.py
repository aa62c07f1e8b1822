"""Live moves (issue #16) to and from LVM, for real: a running firmware-only guest (TCG,
inside the virtme-ng guest, which has device-mapper) on active LVs, its libvirtd, guest
writes through QEMU's block layer during the mirror, read back from the target.

The tier `lvm_guest_live` of `make test` (scripts/run-tests.sh), one guest boot; by hand::

    PATH=$PWD/.venv/bin:$PATH .venv/bin/python -m tests.env.vng run-tier \
        --vng-out build/lvm_guest_live --vng-tests tests/lvm_guest_live
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

from storagectl.migrate.journal import LIVE_STEPS
from tests.env.lvm import LvmEnv
from tests.lvm_guest.test_migrate_lvm import instance_lvs, lv_path, lvm_instance, vda
from tests.lvm_guest.test_migrate_lvm_rbd import CEPH_TIMEOUT, rbd_node  # noqa: F401
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
    proc = node.spawn(
        "migrate", uuid, "--to", "lvm", "--yes", "--bwlimit", "1", "--converge-timeout", "900"
    )
    wait_while_running(proc, lambda: journal_step(node, uuid) == "ready", timeout=600)
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
    # and back into an LV, live (qcow2 -> lvm): the retained LV holding the name is
    # moved aside (or deleted, --delete-retained) as offline
    res = node.cli("migrate", uuid, "--to", "lvm", "--delete-retained", "--yes", timeout=600)
    assert res.returncode == 0, res.stderr
    assert live_disk(node, uuid, "vda") == (lv, "raw")
    node.libvirtd.connect().lookupByUUIDString(uuid).destroy()
    assert read_pattern(lv, "raw", 0x4A, "7M", "64k")
    assert read_pattern(lv, "raw", 7, "1M", "1M")


def test_a_live_move_into_a_thin_lv_is_refused(
    node: Node, guest_vg: LvmEnv, started: list[str]
) -> None:
    """Nova's sparse_logical_volumes: QEMU 7.2's mirror (blockdev-mirror, sync=full) zeroes
    its target, and dm-thin has no WRITE_ZEROES: a 256 MiB disk holding 4 MiB moved live
    into a thin LV in a 64 MiB pool filled the pool and the copy failed (measured here
    before the refusal). So a live move into a thin LV is refused, nothing changed; the
    offline move (which skips zeros) stays thin (test_migrate_lvm.py)."""
    node.conf.write_text(node.conf.read_text() + "sparse_logical_volumes = True\n")
    uuid = make_instance(node, root="flat", size_mib=64, data_mib=4, local_mib=None)
    before = node.xml(uuid)
    start(node, uuid)
    started.append(uuid)
    res = node.cli("migrate", uuid, "--to", "lvm", "--yes", timeout=600)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "live copy into a thin LV" in res.stderr and "move it offline" in res.stderr
    assert node.xml(uuid) == before
    assert not (node.instances / uuid / "storage.migration.json").exists()
    assert live_disk(node, uuid, "vda") == (str(node.instances / uuid / "disk"), "raw")


def test_a_running_lvm_guest_moves_live_to_rbd_and_back(rbd_node: Node, guest_vg: LvmEnv) -> None:  # noqa: F811
    """Live (issue #16): an LV <-> an RBD image of a running guest, its cephx key in a
    libvirt secret, a guest write during each mirror, read back from each target."""
    import contextlib

    from tests.ceph.test_migrate_live_rbd import define_secret
    from tests.migrate_support import SECRET, hmp_write, live_disk, read_pattern, start

    node, cluster = rbd_node, rbd_node.cluster
    define_secret(node.libvirtd, cluster)
    uuid = lvm_instance(node, guest_vg)
    lv = lv_path(guest_vg, uuid)
    image = f"{uuid}_disk"
    start(node, uuid)
    try:
        hmp_write(node, uuid, "vda", 0x1B, "5M", "64k")
        res = node.cli(
            "migrate", uuid, "--to", "rbd", "--yes", "--secret-uuid", SECRET,
            "--ceph-timeout", CEPH_TIMEOUT, timeout=900,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert live_disk(node, uuid, "vda") == (f"{cluster.pool}/{image}", "raw")
        hmp_write(node, uuid, "vda", 0x2B, "6M", "64k")
        assert read_pattern(cluster.qemu_uri(image), "raw", 0x1B, "5M", "64k", shared=False)
        res = node.cli(
            "migrate", uuid, "--to", "lvm", "--yes", "--delete-retained",
            "--ceph-timeout", CEPH_TIMEOUT, timeout=900,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        new_lv = live_disk(node, uuid, "vda")[0]
        assert new_lv.startswith(f"/dev/{guest_vg.vg}/") and new_lv != ""
        for pattern, offset in ((0x1B, "5M"), (0x2B, "6M"), (7, "1M")):
            assert read_pattern(new_lv, "raw", pattern, offset, "64k"), hex(pattern)
        assert lv  # the first LV: retained (or, moved aside, renamed) as offline
    finally:
        with contextlib.suppress(Exception):
            node.libvirtd.connect().lookupByUUIDString(uuid).destroy()


BOUNDARIES = [f"{s}:{p}" for s in LIVE_STEPS for p in ("before", "after")]
BEFORE_PIVOT = BOUNDARIES[: BOUNDARIES.index("pivot:before") + 1]


def chessboard(faults: list[str]) -> list[tuple[str, str]]:
    """(fault, direction) alternating "lvm" (flat -> LVM) and "flat" (LVM -> flat), each
    direction killed once in every step, at its "before" in one step and its "after" in
    the next: every boundary once, each direction at every step. (All 16 boundaries of
    both directions, 32 cases, cost ~35 s each under nested TCG: ~19 min; :data:`FULL`
    runs them, see docs/design/live-moves.md.)"""
    out: list[tuple[str, str]] = []
    for k, step in enumerate(dict.fromkeys(f.split(":")[0] for f in faults)):
        first, second = ("before", "after") if k % 2 == 0 else ("after", "before")
        out += [(f"{step}:{first}", "lvm"), (f"{step}:{second}", "flat")]
    return [(f, to) for f, to in out if f in faults]


#: ``STORAGECTL_LVM_LIVE_MATRIX=full``: every boundary in both directions (by hand, ~31 min)
FULL = os.environ.get("STORAGECTL_LVM_LIVE_MATRIX") == "full"


def cases(faults: list[str]) -> list[tuple[str, str]]:
    if FULL:
        return [(f, to) for f in faults for to in ("lvm", "flat")]
    return chessboard(faults)


def progress(what: str, _t0: list[float] = []) -> None:  # noqa: B006 - the run's start
    """A line per kill case in the tier's out dir (shared with the host), so that a slow
    or stuck guest run shows how far it got."""
    out = os.environ.get("STORAGECTL_GUEST_OUT")
    if not _t0:
        _t0.append(time.monotonic())
    if out:
        with open(Path(out, "progress.log"), "a") as fh:
            fh.write(f"{time.monotonic() - _t0[0]:8.1f}s {what}\n")


class Writes:
    """Guest writes through QEMU (HMP qemu-io), each at its own 64 KiB slot past the
    instance's data, remembered so that every one can be read back from the final disk."""

    def __init__(self, node: Node, uuid: str) -> None:
        self.node, self.uuid, self.done = node, uuid, []

    def write(self) -> tuple[int, str]:
        pattern, offset = 0x10 + len(self.done), f"{4096 + 64 * len(self.done)}k"
        hmp_write(self.node, self.uuid, "vda", pattern, offset, "64k")
        self.done.append((pattern, offset))
        return pattern, offset

    def missing_on(self, path: str | Path) -> list[tuple[int, str]]:
        """The writes NOT on ``path`` (the guest shut off)."""
        return [
            (p, o) for p, o in self.done if not read_pattern(path, "raw", p, o, "64k", shared=False)
        ]


def held(d: Path) -> list[tuple[str, int]]:
    """The instance directory's files: (name, inode) of the disks, the name of the
    metadata (storage.yaml, disk.info: rewritten in place), the journal left out."""
    meta = ("storage.yaml", "disk.info")
    return sorted(
        (p.name, 0 if p.name in meta else p.lstat().st_ino)
        for p in d.iterdir()
        if "migration" not in p.name
    )


def running_flat(
    node: Node, guest_vg: LvmEnv, started: list[str]
) -> tuple[str, Path, libvirt.virDomain, str, Writes]:
    """A running guest on a 16 MiB flat disk (2 MiB of pattern 7 at 1 MiB): its uuid,
    instance dir, domain, the LV a move to LVM makes, and its :class:`Writes`."""
    uuid = make_instance(node, root="flat", size_mib=16, data_mib=2, local_mib=None)
    start(node, uuid)
    started.append(uuid)
    dom = node.libvirtd.connect().lookupByUUIDString(uuid)
    return uuid, node.instances / uuid, dom, lv_path(guest_vg, uuid), Writes(node, uuid)


def test_kill_9_at_every_step_into_and_out_of_an_lv_then_resume(
    node: Node, guest_vg: LvmEnv, started: list[str]
) -> None:
    """kill -9 of storagectl in each step of a live move flat -> LVM and of LVM -> flat
    (:func:`chessboard`: all 16 boundaries), the same running guest throughout: it never
    stops, a write made while storagectl is dead is on the target after --resume, and at
    the end every write of the whole run is on the disk."""
    uuid, d, dom, lv, writes = running_flat(node, guest_vg, started)
    for fault, to in cases(BOUNDARIES):
        want = lv if to == "lvm" else str(d / "disk")
        where = f"--to {to} killed at {fault}, then --resume"
        progress(where)
        res = node.killed("migrate", uuid, "--to", to, "--yes", "--delete-retained", fault=fault)
        assert res.returncode == -9, (where, res.stderr)
        assert dom.isActive(), where
        pattern, offset = writes.write()  # while storagectl is dead
        res = node.cli("migrate", "--resume", uuid, "--yes", timeout=600)
        assert res.returncode == 0, (where, res.stderr)
        assert journal_step(node, uuid) is None, where
        assert live_disk(node, uuid, "vda") == (want, "raw"), where
        assert read_pattern(want, "raw", pattern, offset, "64k"), where
    dom.destroy()
    assert writes.missing_on(d / "disk") == []
    assert read_pattern(d / "disk", "raw", 7, "1M", "2M", shared=False)


def test_kill_9_before_the_pivot_into_and_out_of_an_lv_then_rollback(
    node: Node, guest_vg: LvmEnv, started: list[str]
) -> None:
    """kill -9 in each step up to the pivot (:func:`chessboard` of the 11 boundaries up to
    ``pivot:before``), then --rollback: moving flat -> LVM the guest stays on its file and
    the target LV is gone; moving LVM -> flat it stays on its LV and the target file is
    gone. No write is lost."""
    uuid, d, dom, lv, writes = running_flat(node, guest_vg, started)
    todo = cases(BEFORE_PIVOT)
    for to, stays in (("lvm", str(d / "disk")), ("flat", lv)):
        if to == "flat":  # now onto the LV, for the other direction
            res = node.cli(
                "migrate", uuid, "--to", "lvm", "--yes", "--delete-retained", timeout=600
            )
            assert res.returncode == 0, res.stderr
            assert live_disk(node, uuid, "vda") == (lv, "raw")
        for fault in [f for f, direction in todo if direction == to]:
            where = f"--to {to} killed at {fault}, then --rollback"
            progress(where)
            before = (held(d), instance_lvs(guest_vg, uuid))
            res = node.killed("migrate", uuid, "--to", to, "--yes", fault=fault)
            assert res.returncode == -9, (where, res.stderr)
            writes.write()
            res = node.cli("migrate", "--rollback", uuid, "--yes", timeout=600)
            assert res.returncode == 0, (where, res.stderr)
            assert journal_step(node, uuid) is None, where
            assert live_disk(node, uuid, "vda") == (stays, "raw"), where
            assert not dom.blockJobInfo("vda", 0), where
            # the target is gone, and nothing else changed (the retained source of the
            # move before, under Nova's name, included)
            assert (held(d), instance_lvs(guest_vg, uuid)) == before, where
    dom.destroy()
    assert writes.missing_on(lv) == []
    assert read_pattern(lv, "raw", 7, "1M", "2M", shared=False)
