"""LVM backend against output captured from real lvm2 2.03.16.

tests/fixtures/lvm/host.json: the host, activation disabled (tests/env/lvm.py);
tests/fixtures/lvm/guest.json: the virtme-ng guest, real device-mapper. Each is
a list of {label, argv, exit_code, stdout, stderr} recorded by
tests/fixtures/lvm/capture.py while the backend ran; a test replays one label.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from oslo_concurrency import processutils

from storagectl import errors
from storagectl.backends.lvm import (
    LVM,
    SPARSE_PREALLOCATED,
    InvalidLVMName,
    LogicalVolume,
    LogicalVolumeNotFound,
    VolumeGroup,
    parse_tag,
    safe_tag,
)
from storagectl.host.process import Runner

FIXTURES = Path(__file__).parent.parent / "fixtures" / "lvm"
VG = "stctl_capture"
UUID = "9d6c3e7a-0f1b-4c2d-8e3f-4a5b6c7d8e9f"
DISK = f"{UUID}_disk"
MiB = 1024 * 1024
LVM_TAG = re.compile(r"[A-Za-z0-9_+.\-/=!:&#]+")


def records(where: str, label: str) -> list[dict[str, Any]]:
    found = [r for r in json.loads((FIXTURES / f"{where}.json").read_text()) if r["label"] == label]
    assert found, f"no capture labelled {label!r} in {where}.json"
    return found


class FakeExecutor:
    """Answers from a dict keyed by argv prefix (longest wins); records every call."""

    def __init__(self, answers: dict[tuple[str, ...], dict[str, Any]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    @classmethod
    def replay(cls, where: str, label: str) -> FakeExecutor:
        return cls({tuple(r["argv"]): r for r in records(where, label)})

    def __call__(self, *argv: str, **kwargs: Any) -> tuple[str, str]:
        self.calls.append(argv)
        matches = [p for p in self.answers if argv[: len(p)] == p]
        if not matches:
            raise AssertionError(f"unexpected command {argv}")
        answer = self.answers[max(matches, key=len)]
        if answer["exit_code"] != 0:
            raise processutils.ProcessExecutionError(
                stdout=answer["stdout"],
                stderr=answer["stderr"],
                exit_code=answer["exit_code"],
                cmd=" ".join(argv),
            )
        return answer["stdout"], answer["stderr"]


def backend(fake: FakeExecutor) -> LVM:
    return LVM(Runner(fake))


def captured_argv(where: str, label: str) -> list[tuple[str, ...]]:
    return [tuple(r["argv"]) for r in records(where, label)]


# -- volume groups ---------------------------------------------------------------


def test_volume_group_parses_bytes_and_runs_the_captured_vgs():
    fake = FakeExecutor.replay("host", "vgs")
    group = backend(fake).volume_group(VG)
    assert group == VolumeGroup(name=VG, size=1069547520, free=1069547520, extent_size=4 * MiB)
    assert fake.calls == captured_argv("host", "vgs")
    assert fake.calls[0][:6] == ("vgs", "--reportformat", "json", "--units", "b", "--nosuffix")


def test_missing_volume_group_is_volume_group_not_found():
    fake = FakeExecutor.replay("host", "vgs_missing_vg")
    with pytest.raises(errors.VolumeGroupNotFound) as info:
        backend(fake).volume_group("nope_vg")
    assert info.value.vg_name == "nope_vg"
    assert str(info.value) == "volume group nope_vg not found"


@pytest.mark.parametrize("call", ["list_volumes", "get_volume"])
def test_lvs_on_a_missing_volume_group_is_volume_group_not_found(call):
    answers = {tuple(r["argv"][:1]): r for r in records("host", "lvs_missing_vg")}
    lvm = backend(FakeExecutor(answers))
    with pytest.raises(errors.VolumeGroupNotFound):
        if call == "list_volumes":
            lvm.list_volumes("nope_vg")
        else:
            lvm.get_volume("nope_vg", DISK)


def test_other_lvs_failures_stay_command_failed():
    (rec,) = records("host", "lvs_missing_vg")
    other = {**rec, "stderr": "  Reading VG stctl_capture failed: locking error\n"}
    with pytest.raises(errors.CommandFailed):
        backend(FakeExecutor({("lvs",): other})).list_volumes(VG)


def test_unreadable_report_is_backend_error():
    (rec,) = records("host", "vgs")
    with pytest.raises(errors.BackendError, match="cannot read the JSON report of vgs"):
        backend(FakeExecutor({("vgs",): {**rec, "stdout": "  VG #PV\n"}})).volume_group(VG)


# -- listing -----------------------------------------------------------------------


def test_list_volumes_host_metadata_only():
    fake = FakeExecutor.replay("host", "list")
    volumes = backend(fake).list_volumes(VG)
    assert volumes == [
        LogicalVolume(
            vg=VG,
            name=DISK,
            size=24 * MiB,
            tags=(f"storagectl.instance={UUID}",),
            path=f"/dev/{VG}/{DISK}",
            attr="-wi-XX----",  # state X: activation disabled
            thin=False,
        ),
        LogicalVolume(
            vg=VG,
            name=f"{UUID}_disk__eph0",
            size=8 * MiB,
            tags=("storagectl.note=a&20b&3dc",),
            path=f"/dev/{VG}/{UUID}_disk__eph0",
            attr="-wi-XX----",
            thin=False,
        ),
    ]
    assert fake.calls == captured_argv("host", "list")


def test_list_volumes_guest_skips_pools_and_knows_every_sparse_kind():
    volumes = {v.name: v for v in backend(FakeExecutor.replay("guest", "list")).list_volumes(VG)}
    assert sorted(volumes) == sorted(
        f"{UUID}_{d}" for d in ("disk", "disk.local", "disk.swap", "disk.eph1")
    )  # no "..._pool", no "lvol1"
    plain = volumes[f"{UUID}_disk"]
    assert (plain.thin, plain.size, plain.attr) == (False, 32 * MiB, "-wi-a-----")
    ours = volumes[f"{UUID}_disk.local"]  # create(sparse=True)
    assert (ours.thin, ours.size, ours.attr[0]) == (True, 1024 * MiB, "V")
    novas = volumes[f"{UUID}_disk.swap"]  # Nova's argv: thin LV in pool lvol1
    assert (novas.thin, novas.size) == (True, 1024 * MiB)
    legacy = volumes[f"{UUID}_disk.eph1"]  # snapshot of a zero "_vorigin"
    # lv_size is the 64 MiB copy-on-write store; the device is origin_size.
    assert (legacy.thin, legacy.size, legacy.attr[0]) == (True, 1024 * MiB, "s")


def test_get_volume_selects_by_name_and_missing_is_none():
    fake = FakeExecutor.replay("host", "get_missing")
    assert backend(fake).get_volume(VG, "nope") is None
    (argv,) = fake.calls
    assert argv[argv.index("-S") + 1] == 'lv_name="nope"'
    assert argv[-1] == VG


# -- create --------------------------------------------------------------------------


def test_create_rounds_up_to_extents_and_tags():
    fake = FakeExecutor.replay("host", "create_disk")
    tags = [safe_tag("storagectl.instance", UUID), safe_tag("storagectl.disk", "disk")]
    lv = backend(fake).create(VG, DISK, 20 * MiB + 1, tags=tags)
    assert fake.calls == captured_argv("host", "create_disk")
    vgs, lvcreate, lvs = fake.calls
    assert vgs[0] == "vgs" and lvs[0] == "lvs"
    assert lvcreate == (
        "lvcreate", "--yes", "-L", f"{24 * MiB}b", "-n", DISK,
        "--addtag", f"storagectl.instance={UUID}", "--addtag", "storagectl.disk=disk", VG,
    )  # fmt: skip
    assert lv.size == 24 * MiB and set(lv.tags) == set(tags) and not lv.thin


def test_create_sparse_makes_a_thin_lv_in_its_own_64mib_pool():
    fake = FakeExecutor.replay("guest", "create_sparse")
    name = f"{UUID}_disk.local"
    lv = backend(fake).create(VG, name, 1024 * MiB, sparse=True, tags=["t=1"])
    assert fake.calls == captured_argv("guest", "create_sparse")
    pool, thin = fake.calls[1:3]
    assert pool == (
        "lvcreate", "--yes", "--type", "thin-pool", "-L", f"{SPARSE_PREALLOCATED}b", "--zero", "y",
        "-n", f"{name}_pool", VG,
    )  # fmt: skip
    # The tags go with the thin LV: given to the one-step form they land on the pool.
    assert thin == (
        "lvcreate", "--yes", "--type", "thin", "--virtualsize", f"{1024 * MiB}b",
        "--thinpool", f"{name}_pool", "-n", name, "--addtag", "t=1", VG,
    )  # fmt: skip
    assert (lv.thin, lv.size, lv.tags) == (True, 1024 * MiB, ("t=1",))
    assert lv.path == f"/dev/{VG}/{name}"


def test_create_sparse_removes_its_pool_when_the_thin_lv_fails():
    (failed,) = [r for r in records("host", "lvcreate_exists") if r["argv"][0] == "lvcreate"]
    answers = _answers("guest", "create_sparse", ("vgs", "lvcreate"))
    name = f"{UUID}_disk.local"
    thin = next(a for a in answers if "thin" in a)
    answers[thin] = failed  # derived: the captured "already exists" failure
    answers[("lvremove",)] = {"exit_code": 0, "stdout": "", "stderr": ""}
    fake = FakeExecutor(answers)
    with pytest.raises(errors.CommandFailed, match="already exists"):
        backend(fake).create(VG, name, 1024 * MiB, sparse=True, tags=["t=1"])
    assert fake.calls[-1] == ("lvremove", "--yes", f"{VG}/{name}_pool")


def _vgs_with_free(free: int) -> dict[tuple[str, ...], dict[str, Any]]:
    (rec,) = records("host", "vgs")
    report = json.loads(rec["stdout"])
    report["report"][0]["vg"][0]["vg_free"] = str(free)
    return {("vgs",): {**rec, "stdout": json.dumps(report)}}


@pytest.mark.parametrize(
    ("free", "size", "sparse"),
    [(8 * MiB, 8 * MiB + 1, False), (SPARSE_PREALLOCATED - 4 * MiB, 1024 * MiB, True)],
)
def test_create_without_space_fails_before_lvcreate(free, size, sparse):
    fake = FakeExecutor(_vgs_with_free(free))
    with pytest.raises(errors.BackendError, match=f"has {free} bytes free"):
        backend(fake).create(VG, DISK, size, sparse=sparse)
    assert [c[0] for c in fake.calls] == ["vgs"]


def test_create_sparse_needs_only_the_pool_to_be_free():
    answers = _answers("guest", "create_sparse", ("lvcreate", "lvs"))
    fake = FakeExecutor({**_vgs_with_free(SPARSE_PREALLOCATED), **answers})
    lv = backend(fake).create(VG, f"{UUID}_disk.local", 1024 * MiB, sparse=True, tags=["t=1"])
    assert lv.thin


def _answers(where: str, label: str, commands: tuple[str, ...]) -> dict:
    return {tuple(r["argv"]): r for r in records(where, label) if r["argv"][0] in commands}


def test_create_existing_name_is_command_failed():
    fake = FakeExecutor.replay("host", "lvcreate_exists")
    with pytest.raises(errors.CommandFailed, match="already exists in volume group"):
        backend(fake).create(VG, DISK, 4 * MiB)


@pytest.mark.parametrize("size", [0, -1])
def test_create_refuses_non_positive_sizes(size):
    fake = FakeExecutor({})
    with pytest.raises(InvalidLVMName):
        backend(fake).create(VG, DISK, size)
    assert fake.calls == []


# -- tags ------------------------------------------------------------------------------


def test_add_and_remove_tags_argv():
    fake = FakeExecutor.replay("host", "add_tags")
    eph = f"{UUID}_disk__eph0"
    backend(fake).add_tags(VG, eph, [safe_tag("storagectl.note", "a b=c")])
    assert fake.calls == [("lvchange", "--addtag", "storagectl.note=a&20b&3dc", f"{VG}/{eph}")]
    fake = FakeExecutor.replay("host", "remove_tags")
    backend(fake).remove_tags(VG, DISK, ["storagectl.disk=disk"])
    assert fake.calls == [("lvchange", "--deltag", "storagectl.disk=disk", f"{VG}/{DISK}")]


def test_tags_on_a_missing_lv_is_logical_volume_not_found():
    fake = FakeExecutor.replay("host", "lvchange_missing_lv")
    with pytest.raises(LogicalVolumeNotFound) as info:
        backend(fake).add_tags(VG, "nope", ["a"])
    assert (info.value.vg_name, info.value.lv_name) == (VG, "nope")


@pytest.mark.parametrize("tag", ["has space", "", "comma,separated", "ümlaut", "a;b"])
def test_invalid_tags_are_refused_before_running_anything(tag):
    fake = FakeExecutor({})
    with pytest.raises(InvalidLVMName):
        backend(fake).add_tags(VG, DISK, [tag])
    assert fake.calls == []


def test_no_tags_runs_nothing():
    fake = FakeExecutor({})
    backend(fake).remove_tags(VG, DISK, [])
    assert fake.calls == []


@pytest.mark.parametrize(
    ("vg", "lv"), [("bad vg", DISK), (VG, "-leading"), (VG, ".."), (VG, 'x"||lv_name="y')]
)
def test_invalid_names_are_refused_before_running_anything(vg, lv):
    fake = FakeExecutor({})
    with pytest.raises(InvalidLVMName):
        backend(fake).get_volume(vg, lv)
    assert fake.calls == []


@given(st.text(min_size=1), st.text())
def test_safe_tag_is_a_valid_lvm_tag_and_round_trips(key, value):
    tag = safe_tag(key, value)
    assert LVM_TAG.fullmatch(tag)
    assert parse_tag(tag) == (key, value)


def test_parse_tag_ignores_foreign_tags():
    assert parse_tag("plain") is None
    assert parse_tag("a=b=c") is None  # safe_tag escapes "=" inside values
    assert parse_tag("a=&zz") is None
    assert parse_tag("k=") == ("k", "")


# -- remove ------------------------------------------------------------------------------


def test_remove_plain_lv():
    fake = FakeExecutor.replay("host", "remove")
    backend(fake).remove(VG, f"{UUID}_disk__eph0")
    assert fake.calls[-1] == ("lvremove", "--yes", f"{VG}/{UUID}_disk__eph0")


def test_remove_sparse_lv_takes_its_private_pool():
    fake = FakeExecutor.replay("guest", "remove_sparse")
    name = f"{UUID}_disk.local"
    backend(fake).remove(VG, name)
    assert fake.calls[-1] == ("lvremove", "--yes", f"{VG}/{name}", f"{VG}/{name}_pool")


def test_remove_keeps_a_pool_it_did_not_make():
    # Nova's own sparse LV lives in the auto-named pool lvol1.
    (lvs,) = [r for r in records("guest", "list_after_remove") if r["argv"][0] == "lvs"]
    fake = FakeExecutor({("lvs",): lvs, ("lvremove",): {**lvs, "stdout": "", "stderr": ""}})
    backend(fake).remove(VG, f"{UUID}_disk.swap")
    assert fake.calls[-1] == ("lvremove", "--yes", f"{VG}/{UUID}_disk.swap")


def test_remove_keeps_a_private_pool_that_has_other_users():
    (lvs,) = [r for r in records("guest", "remove_sparse") if r["argv"][0] == "lvs"]
    report = json.loads(lvs["stdout"])
    rows = report["report"][0]["lv"]
    (ours,) = [r for r in rows if r["lv_name"] == f"{UUID}_disk.local"]
    other = copy.deepcopy(ours) | {"lv_name": "someone_else"}  # derived: a second thin LV
    rows.append(other)
    answers = {
        ("lvs",): {**lvs, "stdout": json.dumps(report)},
        ("lvremove",): {**lvs, "stdout": "", "stderr": ""},
    }
    fake = FakeExecutor(answers)
    backend(fake).remove(VG, f"{UUID}_disk.local")
    assert fake.calls[-1] == ("lvremove", "--yes", f"{VG}/{UUID}_disk.local")


def test_remove_missing_lv_is_logical_volume_not_found():
    (lvs,) = [r for r in records("host", "remove") if r["argv"][0] == "lvs"]
    fake = FakeExecutor({("lvs",): lvs})
    with pytest.raises(LogicalVolumeNotFound):
        backend(fake).remove(VG, "nope")
    assert [c[0] for c in fake.calls] == ["lvs"]


# -- Nova names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("disk", "lv"),
    [
        ("disk", f"{UUID}_disk"),
        ("disk.local", f"{UUID}_disk.local"),
        ("disk_eph0", f"{UUID}_disk__eph0"),
        ("a__b", f"{UUID}_a____b"),
    ],
)
def test_volume_name_matches_nova(disk, lv):
    assert LVM.volume_name(UUID, disk) == lv
    assert LVM.parse_volume_name(lv) == (UUID, disk)


@pytest.mark.parametrize(
    "lv",
    [
        "lvol1",
        f"{UUID}_disk.local_pool",  # our private thin pool: a lone "_"
        f"{UUID}_",
        f"{UUID}disk",
        "not-a-uuid-at-all-not-a-uuid-at-all_disk",
        f"{UUID}_disk___x",
    ],
)
def test_parse_volume_name_rejects_non_nova_names(lv):
    assert LVM.parse_volume_name(lv) is None


@given(st.uuids().map(str), st.text(alphabet="abcdefgh_.-0123", min_size=1))
def test_volume_name_round_trips(uuid, disk):
    assert LVM.parse_volume_name(LVM.volume_name(uuid, disk)) == (uuid, disk)
