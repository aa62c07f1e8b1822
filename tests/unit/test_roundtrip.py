"""migrate round trips (#20): a retained copy of the instance in the way of a migration is
moved aside (or deleted), never refused, never reused; the record stays right.

The storage here is a fake that knows which locations exist (by ``loc_key``) and records
renames and removals; the real renames run in tests/libvirtd, tests/ceph and
tests/lvm_guest ``test_roundtrip*.py``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from storagectl.backends import Storage, remove_command
from storagectl.host.config import load_nova_config
from storagectl.host.process import Runner
from storagectl.migrate import roundtrip, switch
from storagectl.migrate.plan import MigrationRefused, Options, describe, make_plan
from storagectl.migrate.preflight import preflight
from storagectl.migrate.retained import RetainedInvalid, delete_retained, retained_location
from storagectl.model.layout import Backend, Code, DiskLayout, Role
from storagectl.model.location import Location, location
from storagectl.record import record as rec
from storagectl.record.persist import WRITTEN, PersistOutcome, _write_locked

UUID = "0f6a3c1e-2b1d-4c59-9a43-5d8e7b2f1a00"
OTHER = "9d6c3e7a-0f1b-4c2d-8e3f-4a5b6c7d8e9f"
GiB = 1 << 30
NOW = "2026-12-03T23:00:00Z"


class FakeStorage:
    """Existence by location key; rename/remove change it and are logged."""

    def __init__(self, *present: Location) -> None:
        self.present = {roundtrip.loc_key(loc) for loc in present}
        self.log: list[tuple] = []

    def exists(self, loc: Location) -> bool:
        return roundtrip.loc_key(loc) in self.present

    def rename(self, src: Location, dst: Location) -> None:
        s, d = roundtrip.loc_key(src), roundtrip.loc_key(dst)
        if s in self.present and d not in self.present:
            self.present.discard(s)
            self.present.add(d)
            self.log.append(("rename", s, d))

    def remove(self, loc: Location, *, ours: bool = False) -> bool:
        key = roundtrip.loc_key(loc)
        if key not in self.present:
            return False
        self.present.discard(key)
        self.log.append(("remove", key))
        return True


@pytest.fixture
def nova(tmp_path: Path):
    conf = tmp_path / "nova.conf"
    conf.write_text(
        f"[DEFAULT]\ninstances_path = {tmp_path}/instances\n[libvirt]\n"
        "images_volume_group = nova-vg\nimages_rbd_pool = vms\n"
        "images_rbd_ceph_conf = /etc/ceph/c.conf\nrbd_user = nova\n"
    )
    (tmp_path / "instances" / UUID).mkdir(parents=True)
    return load_nova_config([conf])


def inst(nova) -> str:
    return f"{nova.instances_path}/{UUID}"


def root(nova, backend: Backend) -> DiskLayout:
    kw: dict = {}
    if backend is Backend.RBD:
        kw = dict(pool="vms", image=f"{UUID}_disk", ceph_conf="/etc/ceph/c.conf", rbd_user="nova")
    elif backend is Backend.LVM:
        kw = dict(volume_group="nova-vg", volume=f"{UUID}_disk", path=f"/dev/nova-vg/{UUID}_disk")
    else:
        kw = dict(path=f"{inst(nova)}/disk")
    fmt = "qcow2" if backend is Backend.QCOW2 else "raw"
    return DiskLayout("disk", Role.ROOT, "vda", backend, fmt, virtual_size=GiB, **kw)


def a_record(nova, backend: Backend, *retained: dict) -> rec.Record:
    return rec.Record(
        UUID,
        "instance-0000002a",
        "cn1",
        NOW,
        "storagectl 0.1.0",
        "migrated",
        ("domain-xml",),
        (root(nova, backend),),
        retained,
    )


def kept_file(nova, name: str, backend: str) -> dict:
    fmt = "qcow2" if backend == "qcow2" else "raw"
    return {"disk": "disk", "backend": backend, "format": fmt, "path": f"{inst(nova)}/{name}"}


def kept_image(image: str) -> dict:
    return {
        "disk": "disk",
        "backend": "rbd",
        "format": "raw",
        "pool": "vms",
        "image": image,
        "ceph_conf": "/etc/ceph/c.conf",
        "user": "nova",
    }


def kept_lv(volume: str) -> dict:
    return {
        "disk": "disk",
        "backend": "lvm",
        "format": "raw",
        "path": f"/dev/nova-vg/{volume}",
        "volume_group": "nova-vg",
        "volume": volume,
    }


def planned(nova, record: rec.Record, to: str, storage, **opts):
    plan = make_plan(record, Options(to=to, **opts), nova, uri="qemu:///system")
    roundtrip.plan_displaced(plan, record, storage)
    return plan


def loc_of(item: dict, nova) -> Location:
    return retained_location(item, UUID, inst(nova))


# -- the plan -------------------------------------------------------------------------


def test_rbd_back_to_flat_moves_the_kept_flat_disk_aside(nova) -> None:
    """The issue: flat -> rbd kept the flat file as ``disk``; --to flat needs ``disk``."""
    item = kept_file(nova, "disk", "flat")
    record = a_record(nova, Backend.RBD, item)
    storage = FakeStorage(loc_of(item, nova), Location.of_disk(record.disks[0]))
    plan = planned(nova, record, "flat", storage)
    (m,) = plan.moves
    assert [(d["at"]["path"], d["to"]["path"]) for d in m.displaced] == [
        (f"{inst(nova)}/disk", f"{inst(nova)}/disk.retained-flat-1")
    ]
    text = "\n".join(describe(plan))
    assert f"retained copy {inst(nova)}/disk of an earlier migration is in the way" in text
    assert f"kept, renamed to {inst(nova)}/disk.retained-flat-1" in text
    preflight(plan, storage, names_only=True)  # not refused
    roundtrip.displace(plan, storage)
    assert storage.log == [("rename", f"{inst(nova)}/disk", f"{inst(nova)}/disk.retained-flat-1")]
    roundtrip.displace(plan, storage)  # again (a resumed create): nothing more
    assert len(storage.log) == 1
    after = switch.migrated_record(record, plan, now=NOW)
    assert [(r["backend"], r.get("path") or r.get("image")) for r in after.retained_sources] == [
        ("flat", f"{inst(nova)}/disk.retained-flat-1"),
        ("rbd", f"{UUID}_disk"),
    ]
    assert after.disks[0].path == f"{inst(nova)}/disk"
    assert roundtrip.live_retained(after.disks, after.retained_sources) == []


def test_delete_retained_with_to_says_so_and_drops_the_item(nova) -> None:
    item = kept_file(nova, "disk", "flat")
    record = a_record(nova, Backend.RBD, item)
    storage = FakeStorage(loc_of(item, nova), Location.of_disk(record.disks[0]))
    plan = planned(nova, record, "flat", storage, delete_retained=True)
    assert "deleted at cleanup (--delete-retained)" in "\n".join(describe(plan))
    roundtrip.displace(plan, storage)
    assert roundtrip.remove_displaced(plan, storage) == [f"{inst(nova)}/disk.retained-flat-1"]
    after = switch.migrated_record(record, plan, now=NOW, keep_displaced=False)
    assert [r["backend"] for r in after.retained_sources] == ["rbd"]


@pytest.mark.parametrize(
    "backend,to,item,moved",
    [
        ("flat", "rbd", kept_image(f"{UUID}_disk"), f"rbd:vms/{UUID}_disk.retained-rbd-1"),
        ("flat", "lvm", kept_lv(f"{UUID}_disk"), f"/dev/nova-vg/{UUID}_disk.retained-lvm-1"),
    ],
)
def test_block_targets_held_by_a_kept_copy(nova, backend, to, item, moved) -> None:
    record = a_record(nova, Backend(backend), item)
    storage = FakeStorage(loc_of(item, nova), Location.of_disk(record.disks[0]))
    plan = planned(nova, record, to, storage)
    (d,) = plan.moves[0].displaced
    assert roundtrip.loc_key(Location.from_record(d["to"])) == moved
    # the create step's own target name is the kept copy until it is moved aside:
    # a rollback before that must not remove it
    assert roundtrip.holds_retained(plan.moves[0], storage)
    roundtrip.displace(plan, storage)
    assert not roundtrip.holds_retained(plan.moves[0], storage)
    storage.present.add(roundtrip.loc_key(plan.moves[0].dest))  # the created target
    storage.remove(plan.moves[0].dest)  # rollback removes it, then
    roundtrip.restore(plan, storage)
    assert roundtrip.loc_key(loc_of(item, nova)) in storage.present
    assert moved not in storage.present


def test_the_name_a_file_source_is_kept_under_is_freed_too(nova) -> None:
    """flat -> qcow2 -> flat -> qcow2: the third leg keeps its flat source as
    disk.retained-flat, which the first leg's copy holds; -1 is taken, so -2."""
    first = kept_file(nova, "disk.retained-flat", "flat")
    other = kept_file(nova, "disk.retained-flat-1", "flat")
    second = kept_file(nova, "disk.retained-qcow2", "qcow2")
    record = a_record(nova, Backend.FLAT, other, first, second)
    storage = FakeStorage(*(loc_of(i, nova) for i in (first, other, second)))
    storage.present.add(f"{inst(nova)}/disk")
    plan = planned(nova, record, "qcow2", storage)
    (d,) = plan.moves[0].displaced
    assert d["entry"] == first and d["to"]["path"] == f"{inst(nova)}/disk.retained-flat-2"
    after = switch.migrated_record(record, plan, now=NOW)
    assert [Path(r["path"]).name for r in after.retained_sources] == [
        "disk.retained-flat-1",
        "disk.retained-flat-2",
        "disk.retained-qcow2",
        "disk.retained-flat",
    ]


def test_a_name_taken_by_what_the_record_does_not_list_is_refused_with_the_command(nova) -> None:
    record = a_record(nova, Backend.FLAT)
    target = location("rbd", "raw", pool="vms", image=f"{UUID}_disk", ceph_conf="/c", user="u")
    storage = FakeStorage(Location.of_disk(record.disks[0]), target)
    plan = planned(nova, record, "rbd", storage)
    assert plan.moves[0].displaced == []
    with pytest.raises(MigrationRefused) as exc:
        preflight(plan, storage, names_only=True)
    assert "no retained copy in the record" in str(exc.value)
    assert f"rbd --conf /etc/ceph/c.conf --id nova rm vms/{UUID}_disk" in str(exc.value)
    assert remove_command(target) == f"rbd --conf /c --id u rm vms/{UUID}_disk"
    assert remove_command(location("lvm", "raw", volume_group="v", volume="l")) == "lvremove v/l"
    assert remove_command(location("flat", "raw", path="/i/u/disk")) == "rm -- /i/u/disk"


def test_an_item_that_is_not_this_instances_is_never_moved(nova) -> None:
    """A hand-edited record naming another instance's image: not displaced, refused."""
    item = kept_image(f"{UUID}_disk") | {"image": f"{OTHER}_disk"}
    record = a_record(nova, Backend.FLAT, item)
    target = location("rbd", "raw", pool="vms", image=f"{UUID}_disk")
    storage = FakeStorage(Location.of_disk(record.disks[0]), target)
    plan = planned(nova, record, "rbd", storage)
    assert plan.moves[0].displaced == []
    with pytest.raises(MigrationRefused):
        preflight(plan, storage, names_only=True)


def test_a_kept_copy_that_is_gone_is_not_moved_and_leaves_the_record(nova) -> None:
    """The operator removed the kept file (the old refusal's advice) and migrates back."""
    item = kept_file(nova, "disk", "flat")
    record = a_record(nova, Backend.RBD, item)
    storage = FakeStorage(Location.of_disk(record.disks[0]))
    plan = planned(nova, record, "flat", storage)
    assert plan.moves[0].displaced == []
    preflight(plan, storage, names_only=True)
    after = switch.migrated_record(record, plan, now=NOW)
    assert [r["backend"] for r in after.retained_sources] == ["rbd"]


# -- names ----------------------------------------------------------------------------


def test_moved_aside_names_belong_to_the_instance(tmp_path: Path) -> None:
    d = str(tmp_path / UUID)

    def loc(**item):
        return retained_location(item, UUID, d)

    assert loc(disk="disk", backend="flat", path=f"{d}/disk.retained-flat-3").path
    assert loc(disk="disk", backend="rbd", pool="p", image=f"{UUID}_disk.retained-rbd-1").image
    lv = loc(disk="disk", backend="lvm", volume_group="vg", volume=f"{UUID}_disk.retained-lvm-2")
    assert lv.path == f"/dev/vg/{UUID}_disk.retained-lvm-2"
    for item in (
        dict(disk="disk", backend="flat", path=f"{d}/disk.retained-qcow2-1"),  # other backend
        dict(disk="disk", backend="flat", path=f"{d}/disk.retained-flat-x"),
        dict(disk="disk", backend="flat", path=f"{d}/disk.retained-flat-0"),
        dict(disk="disk", backend="rbd", pool="p", image=f"{OTHER}_disk.retained-rbd-1"),
        dict(disk="disk", backend="lvm", volume_group="vg", volume=f"{UUID}_disk.local-lvm-1"),
    ):
        with pytest.raises(RetainedInvalid):
            loc(**item)


def test_file_rename_is_idempotent_and_never_overwrites(tmp_path: Path) -> None:
    a, b = tmp_path / "disk", tmp_path / "disk.retained-flat-1"
    a.write_text("kept")
    storage = Storage(Runner())
    src, dst = location("flat", "raw", path=str(a)), location("flat", "raw", path=str(b))
    storage.rename(src, dst)
    assert b.read_text() == "kept" and not a.exists()
    storage.rename(src, dst)  # done already
    a.write_text("new target")
    storage.rename(src, dst)  # never onto an existing name
    assert b.read_text() == "kept" and a.read_text() == "new target"


# -- the record: migrate, --delete-retained, audit, persist -----------------------------


def test_items_at_a_live_disk_are_dropped_and_older_duplicates_too(nova) -> None:
    live = kept_file(nova, "disk", "flat")
    old = kept_file(nova, "disk.retained-qcow2", "qcow2")
    new = old | {"retained_at": NOW}
    record = a_record(nova, Backend.FLAT, live, old, kept_image(f"{UUID}_disk"), new)
    assert roundtrip.without_live(record.retained_sources, record.disks) == (
        kept_image(f"{UUID}_disk"),
        new,
    )
    repaired, dropped = roundtrip.drop_live_retained(record)
    assert dropped == [(live, "disk")] and live not in repaired.retained_sources


def test_delete_retained_drops_the_live_item_and_removes_the_rest(nova) -> None:
    """The issue's dead end: --delete-retained refused for ever."""
    live = kept_file(nova, "disk", "flat")
    image = kept_image(f"{UUID}_disk")
    rec.write_record(inst(nova), a_record(nova, Backend.FLAT, live, image))
    storage = FakeStorage(loc_of(image, nova), loc_of(live, nova))
    removed = delete_retained(inst(nova), UUID, storage, Runner())
    assert removed == [f"rbd:vms/{UUID}_disk"]
    assert storage.log == [("remove", f"rbd:vms/{UUID}_disk")]  # the live disk untouched
    assert rec.read_record(inst(nova), expect_uuid=UUID).retained_sources == ()


def test_audit_finding_and_persist_repair(nova) -> None:
    from storagectl.audit.audit import _record_checks
    from storagectl.inspect.inspection import InspectionResult

    live = kept_file(nova, "disk", "flat")
    record = a_record(nova, Backend.FLAT, live, kept_image(f"{UUID}_disk"))
    rec.write_record(inst(nova), record)
    layout = record.to_instance_layout("shutoff")
    result = InspectionResult(hosts=[], instances=[layout])
    result.retained[UUID] = record.retained_sources
    (f,) = _record_checks(layout, result, Runner())
    assert (f.code, f.disk, f.severity.value) == (
        Code.RETAINED_IN_USE.value,
        "disk",
        "warning",
    )
    assert f"{inst(nova)}/disk" in f.message and f"storagectl persist {UUID}" in f.message
    out = PersistOutcome(UUID, "instance-0000002a", "refused")
    _write_locked(out, replace(record, retained_sources=()), inst(nova), Runner(), False)
    assert out.status == WRITTEN and f"{inst(nova)}/disk (disk disk)" in (out.reason or "")
    after = rec.read_record(inst(nova), expect_uuid=UUID)
    assert after.retained_sources == (kept_image(f"{UUID}_disk"),)
    assert after.disks == record.disks


@pytest.mark.parametrize(
    "at",
    [
        location("flat", "raw", path=f"/i/{UUID}/disk"),
        location("lvm", "raw", volume_group="nova", volume=f"{UUID}_disk"),
        location("rbd", "raw", pool="vms", image=f"{UUID}_disk"),
    ],
    ids=["file", "lvm", "rbd"],
)
def test_an_aside_location_is_named_and_opened_by_its_new_name(at) -> None:
    """A displaced copy's new location is the new name in every field that says where it
    is (an LV's device node too: found by the lvm_guest round trip)."""
    from storagectl.backends import registry

    to = registry.backend_class(at.backend).aside(at, UUID, "disk", 1)
    assert to.key() != at.key() and to.describe() != at.describe()
    assert to.describe().endswith(f"disk.retained-{at.backend}-1")
    assert Location.from_record(to.to_record()) == to
    assert registry.backend_class(at.backend).owns_retained(to, UUID, "disk", f"/i/{UUID}")
