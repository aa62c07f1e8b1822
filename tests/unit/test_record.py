"""The storage record: schema round trips, hostile input, atomic writes, locks."""

from __future__ import annotations

import multiprocessing
import os
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import FrozenInstanceError, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storagectl import errors
from storagectl.host.locks import host_lock, instance_lock, lock_file
from storagectl.model import naming
from storagectl.model.layout import Backend, Backing, DiskLayout, InstanceLayout, Role
from storagectl.record import record as rec

U = "5eed0001-0000-4000-8000-000000000001"
OTHER = "5eed0001-0000-4000-8000-000000000002"
INST = f"/var/lib/nova/instances/{U}"
NOW = "2026-11-23T23:59:01Z"


def qcow2_disk() -> DiskLayout:
    return DiskLayout(
        "disk",
        Role.ROOT,
        "vda",
        Backend.QCOW2,
        "qcow2",
        path=f"{INST}/disk",
        virtual_size=1 << 30,
        allocated_size=200704,
        backing=Backing("/var/lib/nova/instances/_base/3c6f0b8d", "raw"),
    )


def flat_disk() -> DiskLayout:
    return DiskLayout(
        "disk.config",
        Role.CONFIG,
        "hda",
        Backend.FLAT,
        "raw",
        path=f"{INST}/disk.config",
        virtual_size=474112,
        device="cdrom",
    )


def lvm_disk() -> DiskLayout:
    lv = naming.lv_name(U, "disk.local")
    return DiskLayout(
        "disk.local",
        Role.EPHEMERAL,
        "vdb",
        Backend.LVM,
        "raw",
        path=f"/dev/nova-vg/{lv}",
        volume_group="nova-vg",
        volume=lv,
        virtual_size=2 << 30,
    )


def rbd_disk() -> DiskLayout:
    return DiskLayout(
        "disk.swap",
        Role.SWAP,
        "vdc",
        Backend.RBD,
        "raw",
        pool="vms",
        image=naming.rbd_image_name(U, "disk.swap"),
        ceph_conf="/etc/ceph/ceph.conf",
        rbd_user="nova",
        virtual_size=1 << 29,
    )


def volume_disk() -> DiskLayout:
    return DiskLayout(
        "volume-0b5c",
        Role.VOLUME,
        "vdd",
        Backend.VOLUME,
        "raw",
        path="/dev/disk/by-path/ip-10.0.0.5:3260-iscsi-iqn.2010-10.org:vol-lun-1",
    )


ALL_DISKS = (qcow2_disk, flat_disk, lvm_disk, rbd_disk, volume_disk)


def layout(*disks: DiskLayout) -> InstanceLayout:
    return InstanceLayout(U, "instance-0000002a", "cn7", "running", "inferred", list(disks))


def a_record(*disks: DiskLayout) -> rec.Record:
    disks = disks or tuple(make() for make in ALL_DISKS)
    return rec.record_from_layout(layout(*disks), evidence=["domain-xml", "nova.conf"], now=NOW)


@pytest.fixture
def inst_dir(tmp_path: Path) -> Path:
    d = tmp_path / "instances" / U
    d.mkdir(parents=True)
    return d


def recorded(disk: DiskLayout) -> DiskLayout:
    """What the record keeps of an inferred disk (allocated_size changes as guests write)."""
    return replace(disk, allocated_size=None)


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("make", ALL_DISKS, ids=lambda f: f.__name__)
def test_each_backend_round_trips_through_the_file(make, inst_dir):
    record = a_record(make())
    rec.write_record(inst_dir, record)
    back = rec.read_record(inst_dir, expect_uuid=U)
    assert back == record
    assert back.disks == (recorded(make()),)
    assert back.to_yaml() == (inst_dir / "storage.yaml").read_text()


def test_the_yaml_has_the_documented_shape():
    data = a_record().to_dict()
    assert data["schema_version"] == 1
    assert data["instance"] == {"uuid": U, "name": "instance-0000002a", "host": "cn7"}
    assert data["written"] == {"at": NOW, "by": "storagectl 0.1.0"}
    assert data["obtained"] == {"how": "inferred", "evidence": ["domain-xml", "nova.conf"]}
    assert data["retained_sources"] == []
    by_name = {d["name"]: d for d in data["disks"]}
    assert by_name["disk"]["location"] == {"path": f"{INST}/disk"}
    assert by_name["disk"]["backing"] == {
        "path": "/var/lib/nova/instances/_base/3c6f0b8d",
        "format": "raw",
    }
    assert by_name["disk.local"]["location"] == {
        "volume_group": "nova-vg",
        "volume": f"{U}_disk.local",
    }
    assert by_name["disk.swap"]["location"] == {
        "pool": "vms",
        "image": f"{U}_disk.swap",
        "ceph_conf": "/etc/ceph/ceph.conf",
        "user": "nova",
    }
    assert "backing" not in by_name["disk.local"]
    assert "allocated_size" not in by_name["disk"]
    assert "written: {at: '2026-11-23T23:59:01Z', by: storagectl 0.1.0}\n" in a_record().to_yaml()


def test_to_instance_layout_is_metadata_sourced_and_a_copy():
    record = a_record()
    inst = record.to_instance_layout("shut off")
    assert (inst.uuid, inst.name, inst.host, inst.state, inst.source) == (
        U,
        "instance-0000002a",
        "cn7",
        "shut off",
        "metadata",
    )
    assert inst.disks == [recorded(make()) for make in ALL_DISKS]
    assert inst.disk("disk.local").path == f"/dev/nova-vg/{U}_disk.local"
    with pytest.raises(FrozenInstanceError):  # a disk is a value
        inst.disks[0].virtual_size = 1  # type: ignore[misc]
    inst.disks[0] = replace(inst.disks[0], virtual_size=1)
    assert record.disks[0].virtual_size == 1 << 30


def test_same_layout_ignores_when_and_by_whom_only():
    first = a_record()
    later = replace(first, written_at="2027-01-01T00:00:00Z", written_by="storagectl 9")
    assert first.same_layout(later) and first != later
    grown = a_record(replace(qcow2_disk(), virtual_size=2 << 30), *(m() for m in ALL_DISKS[1:]))
    assert not first.same_layout(grown)
    assert not first.same_layout(a_record(qcow2_disk()))


def test_diff_shows_the_changed_lines_only():
    old = a_record(qcow2_disk())
    new = a_record(replace(qcow2_disk(), virtual_size=2 << 30))
    diff = rec.diff_records(old, new)
    assert "-  virtual_size: 1073741824\n+  virtual_size: 2147483648\n" in diff
    assert diff.startswith("--- storage.yaml (recorded)\n+++ storage.yaml (new)\n")
    assert rec.diff_records(old, old) == ""


def test_a_layout_with_an_unknown_disk_cannot_be_recorded():
    odd = DiskLayout(
        "mystery.img", Role.UNKNOWN, "vde", Backend.UNKNOWN, "vmdk", path=f"{INST}/mystery.img"
    )
    with pytest.raises(rec.LayoutNotRecordable) as info:
        rec.record_from_layout(layout(qcow2_disk(), odd), evidence=["domain-xml"])
    assert "disks[1].role: 'unknown' is not one of" in str(info.value)
    assert U in str(info.value)


_names = st.sampled_from(
    ["disk", "disk.local", "disk.swap", "disk.config", "disk.eph0", "disk.eph7", "disk.rescue"]
)
_sizes = st.none() | st.integers(min_value=0, max_value=1 << 50)


@st.composite
def _disks(draw: st.DrawFn) -> DiskLayout:
    name = draw(_names)
    backend = draw(st.sampled_from([Backend.QCOW2, Backend.FLAT, Backend.LVM, Backend.RBD]))
    disk = DiskLayout(
        name,
        naming.role_of(name),
        draw(st.none() | st.just("vdz")),
        backend,
        "qcow2" if backend is Backend.QCOW2 else "raw",
        virtual_size=draw(_sizes),
        device=draw(st.sampled_from(["disk", "cdrom"])),
    )
    if backend is Backend.LVM:
        vg = draw(st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True))
        lv = naming.lv_name(U, name)
        disk = replace(disk, volume_group=vg, volume=lv, path=f"/dev/{vg}/{lv}")
    elif backend is Backend.RBD:
        disk = replace(
            disk,
            pool=draw(st.sampled_from(["vms", "nova.pool"])),
            image=f"{U}_{name}",
            ceph_conf=draw(st.sampled_from(["", None, "/etc/ceph/ceph.conf"])),
            rbd_user=draw(st.none() | st.sampled_from(["nova", "admin"])),
        )
    else:
        disk = replace(disk, path=f"/srv/nova/instances/{U}/{name}")
    if backend is Backend.QCOW2 and draw(st.booleans()):
        backing = Backing(
            "/srv/nova/instances/_base/" + draw(st.text("0123456789abcdef", min_size=1)),
            draw(st.none() | st.just("raw")),
        )
        disk = replace(disk, backing=backing)
    return disk


@st.composite
def layouts_and_records(draw: st.DrawFn) -> tuple[InstanceLayout, rec.Record]:
    """Any recordable layout, and the record storagectl makes of it."""
    disks = draw(st.lists(_disks(), max_size=6, unique_by=lambda d: d.name))
    name = draw(st.text(min_size=1, max_size=40).filter(lambda s: s.isprintable()))
    evidence = draw(
        st.lists(
            st.sampled_from(["domain-xml", "nova.conf", "disk.info", "lvm", "ceph"]), unique=True
        )
    )
    # targets must be unique: give each its own
    disks = [replace(d, target=d.target and f"vd{'abcdefgh'[i]}") for i, d in enumerate(disks)]
    inst = InstanceLayout(U, name, "cn-1", "running", "inferred", disks)
    return inst, rec.record_from_layout(inst, evidence=evidence, now=NOW)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts_and_records())
def test_any_valid_layout_round_trips(made):
    inst, record = made
    assert rec.parse_record(record.to_yaml(), path="p", expect_uuid=U) == record
    assert record.disks == tuple(inst.disks)


# --- hostile and broken records ------------------------------------------------------

GOOD = a_record().to_yaml()
BOMB = "- a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  {chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9)
)


def _swap(old: str, new: str, count: int = 1) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, count)


BAD = {
    "corrupted-yaml": (GOOD[:300] + "\n  - : [\n", "not valid YAML"),
    "truncated": (GOOD[: GOOD.index("- name: disk.swap")], "field retained_sources: missing"),
    "cut-mid-line": (GOOD[: GOOD.index("pool: vms") + 4], "not valid YAML"),
    # A valid record but for a "billion laughs" in retained_sources: 10 levels of 9
    # aliases, 9**10 = 3.5e9 strings once anything walks or dumps it.
    "yaml-bomb": (
        _swap("retained_sources: []\n", "retained_sources:\n" + BOMB),
        "YAML aliases are not allowed",
    ),
    "wrong-schema-version": (
        _swap("schema_version: 1", "schema_version: 2"),
        "field schema_version: 2 is not supported",
    ),
    "schema-version-as-string": (
        _swap("schema_version: 1", "schema_version: '1'"),
        "field schema_version: '1' is not supported",
    ),
    "missing-field": (_swap(", host: cn7}", "}"), "field instance.host: missing"),
    "missing-schema-version": (_swap("schema_version: 1\n", ""), "field schema_version: missing"),
    "unknown-field": (GOOD + "zfs_pool: tank\n", "field zfs_pool: unknown field"),
    "wrong-type": (
        _swap("virtual_size: 1073741824", "virtual_size: 1 GiB"),
        "field disks[0].virtual_size: expected a size in bytes",
    ),
    "negative-size": (
        _swap("virtual_size: 1073741824", "virtual_size: -1"),
        "field disks[0].virtual_size: expected a size in bytes (an integer >= 0), got -1",
    ),
    "boolean-size": (
        _swap("virtual_size: 1073741824", "virtual_size: true"),
        "field disks[0].virtual_size",
    ),
    "unknown-backend": (
        _swap("backend: lvm", "backend: zfs"),
        "field disks[2].backend: 'zfs' is not one of qcow2, flat, lvm, rbd, ploop, volume",
    ),
    "unknown-role": (_swap("role: swap", "role: scratch"), "field disks[3].role: 'scratch'"),
    "role-not-nova-name": (
        _swap("role: swap", "role: ephemeral"),
        "field disks[3].role: ephemeral does not match",
    ),
    "format-not-backend": (
        _swap("format: qcow2", "format: raw"),
        "field disks[0].format: 'raw': a qcow2 disk is opened as qcow2",
    ),
    "lvm-location-keys": (
        _swap("volume_group: nova-vg", "path: /dev/nova-vg"),
        "field disks[2].location.volume_group: missing",
    ),
    "rbd-location-keys": (
        _swap("{pool: vms,", "{pool: vms, path: /x,"),
        "field disks[3].location.path: unknown field",
    ),
    "file-location-keys": (
        _swap(f"{{path: {INST}/disk}}", "{pool: vms}"),
        "field disks[0].location.path: missing",
    ),
    "backing-on-flat": (
        _swap("  device: cdrom\n", "  device: cdrom\n  backing: null\n  allocated_size: 3\n"),
        "field disks[1].allocated_size",
    ),
    "record-of-another-uuid": (
        GOOD.replace(U, OTHER),
        f"field instance.uuid: {OTHER} is not this instance ({U})",
    ),
    "disk-of-another-instance": (
        _swap(f"volume: {U}_disk.local", f"volume: {OTHER}_disk.local"),
        "field disks[2].location.volume: not this disk",
    ),
    "file-of-another-instance": (
        _swap(f"{INST}/disk.config", f"/x/{OTHER}/disk.config"),
        "field disks[1].location.path: not this disk",
    ),
    "relative-path": (
        _swap(f"path: {INST}/disk}}", f"path: {INST}/../{U}/disk}}"),
        "is not an absolute, normalized path",
    ),
    "duplicate-key": (
        _swap(", host: cn7}", ", host: cn7, host: cn8}"),
        "duplicate key 'host' (line 3)",
    ),
    "duplicate-disk": (
        _swap("target: vdb", "target: vda"),
        "field disks[2].target: 'vda' repeats disks[0].target",
    ),
    "unquoted-timestamp": (
        _swap(f"'{NOW}'", NOW),
        "field written.at: expected a string, got an unquoted timestamp",
    ),
    "bad-timestamp": (_swap(f"'{NOW}'", "'2026-13-45T99:00:00Z'"), "field written.at"),
    "nul-in-name": (
        _swap("name: instance-0000002a", 'name: "inst\\0"'),
        "field instance.name: 'inst\\x00' is empty or contains control",
    ),
    # storagectl's own depth limit, well below any YAML library's own.
    "nesting-over-32": ("[" * 40 + "]" * 40, "nested more than 32 levels"),
    # So deep that the YAML library may refuse first (PyYAML 6.0.4 does, at its own limit,
    # in its own words): the promise is only that the record is refused with a reason.
    "deep-nesting": ("[" * 100_000, ("nested more than 32 levels", "not valid YAML: ")),
    "merge-key": (
        _swap("retained_sources: []", "retained_sources:\n- <<: {a: 1}"),
        "YAML merge keys are not allowed",
    ),
    "not-a-mapping": ("- just\n- a list\n", "expected a mapping, got a list"),
    "empty": ("", "expected a mapping, got null"),
    "not-utf8": ("schema_version: 1\nname: \udcff\n", "not UTF-8"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_invalid_record_is_refused_naming_file_and_field(case, inst_dir):
    text, expected = BAD[case]
    path = inst_dir / "storage.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    before = path.read_bytes(), path.stat().st_mtime_ns
    with pytest.raises(errors.RecordInvalid) as info:
        rec.read_record(inst_dir, expect_uuid=U)
    message = str(info.value)
    assert message.startswith(f"invalid storage record {path}: ")
    assert "\n" not in message and "Traceback" not in message
    reasons = expected if isinstance(expected, tuple) else (expected,)
    assert any(reason in message for reason in reasons), message
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before  # left as it was


def test_python_tags_are_refused_and_never_run(inst_dir, tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        f"!!python/object/apply:os.system ['touch {marker}']\n",
        GOOD.replace("host: cn7", f"host: !!python/object/apply:os.system ['touch {marker}']"),
        GOOD.replace(
            "retained_sources: []",
            f"retained_sources:\n- !!python/object/new:subprocess.Popen [[touch, {marker}]]",
        ),
    ]
    for text in payloads:
        (inst_dir / "storage.yaml").write_text(text)
        with pytest.raises(errors.RecordInvalid) as info:
            rec.read_record(inst_dir, expect_uuid=U)
        assert "YAML tag 'tag:yaml.org,2002:python/object/" in str(info.value)
        assert "is not allowed" in str(info.value)
    assert not marker.exists()


def test_a_yaml_bomb_is_refused_quickly(inst_dir):
    text, _ = BAD["yaml-bomb"]
    start = time.monotonic()
    with pytest.raises(errors.RecordInvalid):
        rec.parse_record(text, path="p", expect_uuid=U)
    assert time.monotonic() - start < 1


def test_a_2_mib_file_is_refused_before_parsing(inst_dir):
    path = inst_dir / "storage.yaml"
    # Two MiB of something the parser would take long over and the validator would refuse
    # for another reason: the size must be the reason given.
    path.write_bytes(b"[" * (2 << 20))
    start = time.monotonic()
    with pytest.raises(errors.RecordInvalid) as info:
        rec.read_record(inst_dir, expect_uuid=U)
    assert f"{2 << 20} bytes, more than the {1 << 20} allowed" in str(info.value)
    assert time.monotonic() - start < 0.5
    with pytest.raises(errors.RecordInvalid, match="more than the 1048576 allowed"):
        rec.parse_record(GOOD + "#" * (1 << 20), path="p", expect_uuid=U)


def test_hostile_shapes_within_the_size_limit_are_refused_quickly():
    limit = rec.MAX_RECORD_BYTES
    shapes = [
        "- " * (limit // 2),
        "a: [" + "1," * (limit // 2 - 4) + "]",
        "".join(f"k{i}: {i}\n" for i in range(100_000))[:limit],
    ]
    for text in shapes:
        start = time.monotonic()
        with pytest.raises(errors.RecordInvalid):
            rec.parse_record(text, path="p", expect_uuid=U)
        assert time.monotonic() - start < 3, text[:20]


def test_a_symlink_or_fifo_is_refused_not_followed(inst_dir, tmp_path):
    target = tmp_path / "elsewhere.yaml"
    target.write_text(GOOD)
    (inst_dir / "storage.yaml").symlink_to(target)
    with pytest.raises(errors.RecordInvalid, match="is a symbolic link"):
        rec.read_record(inst_dir, expect_uuid=U)
    (inst_dir / "storage.yaml").unlink()
    os.mkfifo(inst_dir / "storage.yaml")  # opening it for reading must not block
    with pytest.raises(errors.RecordInvalid, match="is not a regular file"):
        rec.read_record(inst_dir, expect_uuid=U)


def test_absent_record_reads_as_none(inst_dir):
    assert rec.read_record(inst_dir, expect_uuid=U) is None
    assert rec.backup_record(inst_dir) is None


# --- writing ---------------------------------------------------------------------------


def test_written_file_is_mode_0640_whatever_the_umask(inst_dir):
    old = os.umask(0o077)
    try:
        path = rec.write_record(inst_dir, a_record())
    finally:
        os.umask(old)
    assert path == inst_dir / "storage.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(os.listdir(inst_dir)) == ["storage.yaml"]


def test_rewrite_replaces_the_file_whole(inst_dir):
    rec.write_record(inst_dir, a_record())
    inode = (inst_dir / "storage.yaml").stat().st_ino
    smaller = a_record(qcow2_disk())
    rec.write_record(inst_dir, smaller)
    assert rec.read_record(inst_dir, expect_uuid=U) == smaller
    assert (inst_dir / "storage.yaml").stat().st_ino != inode  # a rename, not an overwrite


def test_a_leftover_temp_file_does_not_disturb_and_is_cleaned(inst_dir):
    record = a_record()
    rec.write_record(inst_dir, record)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = inst_dir / f".storage.yaml.{dead.stdout.strip()}.0badc0de"
    stale.write_text(GOOD[:100])  # what a writer killed mid-write leaves
    live = inst_dir / f".storage.yaml.{os.getpid()}.feedface"  # a writer still at work
    live.write_text("")
    assert rec.read_record(inst_dir, expect_uuid=U) == record
    rec.write_record(inst_dir, record)
    assert not stale.exists()
    assert live.exists()


def test_a_record_is_written_only_into_its_own_instance_directory(tmp_path):
    other = tmp_path / OTHER
    other.mkdir()
    with pytest.raises(errors.UsageError):
        rec.write_record(other, a_record())
    assert os.listdir(other) == []


def test_missing_instance_directory_is_an_io_error(tmp_path):
    with pytest.raises(rec.RecordIOError, match="cannot write storage record"):
        rec.write_record(tmp_path / U, a_record())


def test_a_hand_built_invalid_record_is_never_written(inst_dir):
    bad = replace(a_record(), written_at="yesterday")
    with pytest.raises(errors.RecordInvalid, match="field written.at"):
        rec.write_record(inst_dir, bad)
    assert os.listdir(inst_dir) == []


def test_backup_copies_the_bytes_even_of_an_invalid_record(inst_dir):
    (inst_dir / "storage.yaml").write_bytes(b"not: [a record\n")
    first = rec.backup_record(inst_dir)
    second = rec.backup_record(inst_dir)
    assert first != second
    for backup in (first, second):
        assert backup.parent == inst_dir
        assert backup.name.startswith("storage.yaml.") and backup.name.endswith(".bak")
        assert backup.read_bytes() == b"not: [a record\n"
        assert stat.S_IMODE(backup.stat().st_mode) == 0o640
    assert not [n for n in os.listdir(inst_dir) if n.startswith(".storage.yaml.")]


# --- locks ------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from storagectl.host.locks import instance_lock
    with instance_lock(sys.argv[1], sys.argv[2]):
        print("held", flush=True)
        time.sleep(float(sys.argv[3]))
""")


FORK = multiprocessing.get_context("fork")  # a real second process, started in ms


def _hold(lock_dir: str, held: Any, hold: float) -> None:
    with instance_lock(lock_dir, U):
        held.set()
        time.sleep(hold)


@pytest.fixture
def held_elsewhere(tmp_path):
    """Another process that holds the instance lock for ``hold`` seconds."""
    procs: list[Any] = []

    def start(hold: float) -> str:
        lock_dir, held = str(tmp_path / "locks"), FORK.Event()
        with instance_lock(lock_dir, OTHER):  # warm up: oslo's import is not what we time
            pass
        proc = FORK.Process(target=_hold, args=(lock_dir, held, hold))
        proc.start()
        procs.append(proc)
        assert held.wait(10)
        return lock_dir

    start.procs = procs
    yield start
    for proc in procs:
        proc.kill()
        proc.join()


def test_a_second_instance_lock_fails_fast_while_another_process_holds_it(held_elsewhere):
    lock_dir = held_elsewhere(5)
    start = time.monotonic()
    with pytest.raises(errors.LockBusy) as info, instance_lock(lock_dir, U):
        pass
    assert time.monotonic() - start < 1  # no waiting (the holder keeps it for 5 s)
    assert info.value.exit_code == 3
    assert f"instance {U} is locked" in str(info.value)
    assert lock_file(lock_dir, U) == f"{lock_dir}/storagectl-{U}"
    assert lock_file(lock_dir, U) in str(info.value)


def test_waiting_longer_than_the_holder_gets_the_lock(held_elsewhere):
    lock_dir = held_elsewhere(0.6)
    start = time.monotonic()
    with instance_lock(lock_dir, U, wait=5):
        waited = time.monotonic() - start
    assert 0.3 < waited < 3


def test_waiting_less_than_the_holder_gives_up_after_the_wait(held_elsewhere):
    lock_dir = held_elsewhere(5)
    start = time.monotonic()
    with pytest.raises(errors.LockBusy), instance_lock(lock_dir, U, wait=0.4):
        pass
    assert 0.35 < time.monotonic() - start < 2


def test_lock_is_free_again_once_the_holder_is_killed(held_elsewhere):
    lock_dir = held_elsewhere(30)
    holder = held_elsewhere.procs[-1]
    holder.kill()  # SIGKILL: no cleanup runs; the kernel drops the fcntl lock
    holder.join()
    with instance_lock(lock_dir, U):
        assert os.path.exists(lock_file(lock_dir, U))  # the file stays, harmless


def test_nested_lock_in_one_process_fails_instead_of_breaking_the_outer(tmp_path):
    lock_dir = str(tmp_path / "locks")
    with instance_lock(lock_dir, U):
        with pytest.raises(errors.LockBusy), instance_lock(lock_dir, U):
            pass
        # fcntl locks are per process: without the in-process guard the inner release
        # would have dropped this one. Another process must still see it held (a fresh
        # interpreter: a fork would inherit this process's held semaphore).
        probe = subprocess.run(
            [sys.executable, "-c", HOLDER, lock_dir, U, "0"], capture_output=True, text=True
        )
        assert probe.returncode != 0 and "LockBusy" in probe.stderr
    with instance_lock(lock_dir, U):
        pass


def test_lock_directory_is_created_private_and_names_are_checked(tmp_path):
    lock_dir = tmp_path / "run" / "locks"
    with instance_lock(str(lock_dir), U), host_lock(str(lock_dir), "audit"):
        assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o700
        assert sorted(os.listdir(lock_dir)) == [f"storagectl-{U}", "storagectl-host-audit"]
    for bad in ("../../etc/passwd", U.upper() + "x", ""):
        with pytest.raises(errors.UsageError), instance_lock(str(lock_dir), bad):
            pass
    with pytest.raises(errors.UsageError), host_lock(str(lock_dir), "../audit"):
        pass
