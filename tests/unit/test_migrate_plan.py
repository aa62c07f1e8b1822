"""migrate: plans from records, the journal and its fault hook, retained-source checks."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from storagectl import errors
from storagectl.host.config import load_nova_config
from storagectl.migrate.journal import Journal, check_fault, journal_path, read_journal
from storagectl.migrate.plan import MigrationRefused, Options, Plan, describe, make_plan
from storagectl.migrate.retained import RetainedInvalid, _location
from storagectl.model.layout import Backend, Backing, DiskLayout, Role
from storagectl.record.record import Record

UUID = "0f6a3c1e-2b1d-4c59-9a43-5d8e7b2f1a00"
OTHER = "9d6c3e7a-0f1b-4c2d-8e3f-4a5b6c7d8e9f"
GiB = 1 << 30


@pytest.fixture
def nova(tmp_path: Path):
    conf = tmp_path / "nova.conf"
    conf.write_text(
        f"[DEFAULT]\ninstances_path = {tmp_path}/instances\n[libvirt]\n"
        "images_volume_group = nova-vg\nimages_rbd_pool = vms\n"
        "images_rbd_ceph_conf = /etc/ceph/c.conf\nrbd_user = nova\n"
    )
    return load_nova_config([conf])


def record(nova, *disks: DiskLayout) -> Record:
    return Record(
        UUID,
        "instance-0000002a",
        "cn1",
        "2026-11-24T00:00:00Z",
        "storagectl 0.1.0",
        "inferred",
        ("domain-xml",),
        disks,
    )


def file_disk(nova, name: str, backend: Backend, target: str) -> DiskLayout:
    fmt = "qcow2" if backend is Backend.QCOW2 else "raw"
    backing = Backing("/b/base", "raw") if backend is Backend.QCOW2 else None
    return DiskLayout(
        name,
        Role.ROOT if name == "disk" else Role.EPHEMERAL,
        target,
        backend,
        fmt,
        path=f"{nova.instances_path}/{UUID}/{name}",
        virtual_size=GiB,
        backing=backing,
    )


def test_qcow2_to_flat_copies_through_a_temporary_name_and_keeps_the_source(nova) -> None:
    rec = record(
        nova,
        file_disk(nova, "disk", Backend.QCOW2, "vda"),
        file_disk(nova, "disk.local", Backend.FLAT, "vdb"),
    )
    plan = make_plan(rec, Options(to="flat"), nova, uri="qemu:///system")
    inst = f"{nova.instances_path}/{UUID}"
    assert [m.name for m in plan.moves] == ["disk"]
    assert plan.skipped == ["disk.local: already flat"]
    m = plan.moves[0]
    assert (m.source.backend, m.source.format, m.source.path) == ("qcow2", "qcow2", f"{inst}/disk")
    assert (m.dest.backend, m.dest.format, m.dest.path) == ("flat", "raw", f"{inst}/disk")
    assert m.temp_path == f"{inst}/disk.migrating"
    assert m.retained_path == f"{inst}/disk.retained-qcow2"
    assert m.copy_dest.path == m.temp_path and m.retained.path == m.retained_path
    text = "\n".join(describe(plan))
    assert "kept as " + f"{inst}/disk.retained-qcow2" in text and "skipped disk.local" in text
    # the plan survives the journal's JSON round trip
    assert Plan.from_dict(plan.to_dict()) == plan


def test_block_targets_follow_nova_naming(nova) -> None:
    rec = record(nova, file_disk(nova, "disk.eph0", Backend.FLAT, "vdb"))
    lvm = make_plan(rec, Options(to="lvm", roles=("ephemeral",)), nova, uri="u").moves[0]
    assert (lvm.dest.volume_group, lvm.dest.volume) == ("nova-vg", f"{UUID}_disk.eph0")
    assert lvm.dest.path == f"/dev/nova-vg/{UUID}_disk.eph0"
    assert lvm.temp_path is None and lvm.retained_path is None  # the file stays where it is
    rbd = make_plan(rec, Options(to="rbd", roles=("ephemeral",), pool="fast"), nova, uri="u").moves[
        0
    ]
    assert (rbd.dest.pool, rbd.dest.image, rbd.dest.ceph_conf, rbd.dest.user) == (
        "fast",
        f"{UUID}_disk.eph0",
        "/etc/ceph/c.conf",
        "nova",
    )


def test_refusals_and_usage_errors(nova, tmp_path: Path) -> None:
    rec = record(nova, file_disk(nova, "disk", Backend.FLAT, "vda"))
    with pytest.raises(MigrationRefused, match="no disk to move to flat: disk: already flat"):
        make_plan(rec, Options(to="flat"), nova, uri="u")
    with pytest.raises(MigrationRefused, match="ephemeral disks not selected"):
        make_plan(
            record(nova, file_disk(nova, "disk.local", Backend.FLAT, "vdb")),
            Options(to="qcow2", roles=("root",)),
            nova,
            uri="u",
        )
    with pytest.raises(errors.UsageError, match="--to must be one of"):
        make_plan(rec, Options(to="ploop"), nova, uri="u")
    with pytest.raises(errors.UsageError, match="cannot move kernel"):
        make_plan(rec, Options(to="qcow2", roles=("kernel",)), nova, uri="u")
    bare = tmp_path / "bare.conf"
    bare.write_text("[DEFAULT]\n")
    with pytest.raises(errors.UsageError, match="--volume-group"):
        make_plan(rec, Options(to="lvm"), load_nova_config([bare]), uri="u")


def _journal(nova, tmp_path: Path) -> Journal:
    rec = record(nova, file_disk(nova, "disk", Backend.QCOW2, "vda"))
    plan = make_plan(rec, Options(to="flat"), nova, uri="qemu:///system")
    plan.instance_dir = str(tmp_path)
    return Journal(plan, "<domain/>", "record text", '{"a": "qcow2"}', started_at="t", pid=1)


def test_journal_round_trip_and_private_mode(nova, tmp_path: Path) -> None:
    j = _journal(nova, tmp_path)
    j.mark("plan", "before")
    assert oct(os.stat(journal_path(tmp_path)).st_mode & 0o777) == "0o600"
    j.mark("plan", "after")
    j.mark("preflight", "before")
    back = read_journal(tmp_path)
    assert (back.step, back.phase, back.done) == ("preflight", "before", ["plan"])
    assert back.started("preflight") and not back.started("copy")
    assert back.plan == j.plan and back.original_disk_info == '{"a": "qcow2"}'
    j.remove()
    assert read_journal(tmp_path) is None
    journal_path(tmp_path).write_text('{"version": 9}')
    with pytest.raises(errors.StorageCtlError, match="unreadable migration journal"):
        read_journal(tmp_path)


def _marked(j: Journal, step: str, phase: str, fault: str) -> None:
    j.mark(step, phase, fault)
    os._exit(0)


def test_fault_hook_kills_the_process_right_after_the_journal_says_so(nova, tmp_path) -> None:
    j = _journal(nova, tmp_path)
    ctx = multiprocessing.get_context("fork")
    for fault, code in (("copy:after", -signal.SIGKILL), ("verify:before", 0)):
        child = ctx.Process(target=_marked, args=(j, "copy", "after", fault))
        child.start()
        child.join(10)
        assert child.exitcode == code
    assert read_journal(tmp_path).done == ["copy"]
    assert check_fault("switch:before") == "switch:before" and check_fault("") is None
    for bad in ("switch", "switch:during", "nap:before"):
        with pytest.raises(errors.UsageError):
            check_fault(bad)


def test_retained_sources_must_belong_to_this_instance(tmp_path: Path) -> None:
    inst = str(tmp_path / UUID)

    def loc(**item):
        return _location(item, UUID, inst)

    ok = loc(disk="disk", backend="qcow2", format="qcow2", path=f"{inst}/disk.retained-qcow2")
    assert ok.path == f"{inst}/disk.retained-qcow2"
    assert loc(disk="disk", backend="flat", path=f"{inst}/disk").path == f"{inst}/disk"
    assert (
        loc(disk="disk", backend="lvm", volume_group="vg", volume=f"{UUID}_disk").path
        == f"/dev/vg/{UUID}_disk"
    )
    assert loc(disk="disk", backend="rbd", pool="vms", image=f"{UUID}_disk").image
    for item in (
        dict(disk="disk", backend="flat", path=f"{inst}/disk.info"),
        dict(disk="disk", backend="flat", path=f"{inst}/../{OTHER}/disk"),
        dict(disk="disk", backend="flat", path="/etc/shadow"),
        dict(disk="disk", backend="lvm", volume_group="vg", volume=f"{OTHER}_disk"),
        dict(disk="disk", backend="rbd", pool="vms", image=f"{OTHER}_disk"),
        dict(disk="storage.yaml", backend="flat", path=f"{inst}/storage.yaml"),
        dict(disk="disk", backend="volume", path=f"{inst}/disk"),
        dict(disk="disk", backend="nonsense", path=f"{inst}/disk"),
    ):
        with pytest.raises(RetainedInvalid):
            loc(**item)
