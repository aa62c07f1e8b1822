"""Host LVM tier: the LVM backend on real lvm2 metadata (activation disabled).

No device-mapper here, so LVs exist only as metadata (lv_attr state ``X``, no
/dev/VG/LV); what the kernel does with them is the guest tier's business.
"""

from __future__ import annotations

import json
import uuid

import pytest

from storagectl import errors
from storagectl.backends.lvm import (
    LVM,
    InvalidLVMName,
    LogicalVolumeNotFound,
    parse_tag,
    safe_tag,
)

MiB = 1024 * 1024


@pytest.fixture
def lvm(lvm_vg):
    return LVM(lvm_vg.runner())


@pytest.fixture
def lv_name(lvm, lvm_vg):
    """A fresh Nova-style LV name; the LV is removed after the test if it exists."""
    name = LVM.volume_name(str(uuid.uuid4()), "disk_eph0")
    yield name
    if lvm.get_volume(lvm_vg.vg, name) is not None:
        lvm.remove(lvm_vg.vg, name)


def lvs_direct(lvm_vg, name):
    """What lvm2 itself says, bypassing the backend."""
    out = lvm_vg.run(
        "lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
        "-o", "lv_name,lv_size,lv_tags", "-S", f'lv_name="{name}"', lvm_vg.vg,
    ).stdout  # fmt: skip
    return json.loads(out)["report"][0]["lv"]


def test_create_writes_metadata_rounded_to_extents(lvm, lvm_vg, lv_name):
    extent = lvm.volume_group(lvm_vg.vg).extent_size
    lv = lvm.create(lvm_vg.vg, lv_name, 5 * MiB, tags=["storagectl.test=1"])
    assert lv.size == -(-5 * MiB // extent) * extent == 8 * MiB
    assert lv.path == f"/dev/{lvm_vg.vg}/{lv_name}"
    assert lv.attr.startswith("-wi-") and not lv.thin
    assert lv.tags == ("storagectl.test=1",)
    assert lvs_direct(lvm_vg, lv_name) == [
        {"lv_name": lv_name, "lv_size": str(8 * MiB), "lv_tags": "storagectl.test=1"}
    ]
    assert LVM.parse_volume_name(lv.name)[1] == "disk_eph0"


def test_list_and_get(lvm, lvm_vg, lv_name):
    before = {v.name for v in lvm.list_volumes(lvm_vg.vg)}
    created = lvm.create(lvm_vg.vg, lv_name, 4 * MiB)
    after = {v.name: v for v in lvm.list_volumes(lvm_vg.vg)}
    assert set(after) - before == {lv_name}
    assert after[lv_name] == created == lvm.get_volume(lvm_vg.vg, lv_name)


def test_get_volume_of_a_missing_lv_is_none(lvm, lvm_vg):
    assert lvm.get_volume(lvm_vg.vg, "no_such_lv") is None


def test_tags_add_and_remove(lvm, lvm_vg, lv_name):
    odd = safe_tag("storagectl.source", "/var/lib/nova/instances/x y/disk=1 ü")
    lvm.create(lvm_vg.vg, lv_name, 4 * MiB, tags=["keep"])
    lvm.add_tags(lvm_vg.vg, lv_name, [odd, "storagectl.b=2"])
    lvm.add_tags(lvm_vg.vg, lv_name, ["storagectl.b=2"])  # already there: no error
    tags = lvm.get_volume(lvm_vg.vg, lv_name).tags
    assert set(tags) == {"keep", odd, "storagectl.b=2"}
    assert parse_tag(odd) == ("storagectl.source", "/var/lib/nova/instances/x y/disk=1 ü")
    lvm.remove_tags(lvm_vg.vg, lv_name, [odd, "storagectl.b=2", "never-there"])
    assert lvm.get_volume(lvm_vg.vg, lv_name).tags == ("keep",)
    assert lvs_direct(lvm_vg, lv_name)[0]["lv_tags"] == "keep"


def test_invalid_tag_is_refused(lvm, lvm_vg, lv_name):
    lvm.create(lvm_vg.vg, lv_name, 4 * MiB)
    with pytest.raises(InvalidLVMName):
        lvm.add_tags(lvm_vg.vg, lv_name, ["has space"])
    assert lvm.get_volume(lvm_vg.vg, lv_name).tags == ()


def test_missing_vg_is_volume_group_not_found(lvm):
    for call in (
        lambda: lvm.volume_group("stctl_missing_vg"),
        lambda: lvm.list_volumes("stctl_missing_vg"),
        lambda: lvm.get_volume("stctl_missing_vg", "x"),
        lambda: lvm.create("stctl_missing_vg", "x", MiB),
        lambda: lvm.add_tags("stctl_missing_vg", "x", ["a"]),
    ):
        with pytest.raises(errors.VolumeGroupNotFound) as info:
            call()
        assert info.value.vg_name == "stctl_missing_vg"


def test_missing_lv_for_tags_and_remove(lvm, lvm_vg):
    with pytest.raises(LogicalVolumeNotFound):
        lvm.add_tags(lvm_vg.vg, "no_such_lv", ["a"])
    with pytest.raises(LogicalVolumeNotFound):
        lvm.remove(lvm_vg.vg, "no_such_lv")


def test_create_twice_fails_and_too_big_fails_early(lvm, lvm_vg, lv_name):
    lvm.create(lvm_vg.vg, lv_name, 4 * MiB)
    with pytest.raises(errors.CommandFailed, match="already exists"):
        lvm.create(lvm_vg.vg, lv_name, 4 * MiB)
    free = lvm.volume_group(lvm_vg.vg).free
    with pytest.raises(errors.BackendError, match="bytes free"):
        lvm.create(lvm_vg.vg, lv_name + "2", free + 1)
    assert lvm.get_volume(lvm_vg.vg, lv_name + "2") is None


def test_sparse_needs_device_mapper_and_leaves_nothing_behind(lvm, lvm_vg, lv_name):
    # Thin pools cannot be made metadata-only; the guest tier tests them for real.
    before = lvm_vg.run("lvs", "-a", "--noheadings", "-o", "lv_name", lvm_vg.vg).stdout
    with pytest.raises(errors.CommandFailed, match="device-mapper"):
        lvm.create(lvm_vg.vg, lv_name, 64 * MiB, sparse=True)
    after = lvm_vg.run("lvs", "-a", "--noheadings", "-o", "lv_name", lvm_vg.vg).stdout
    assert after == before


def test_remove(lvm, lvm_vg, lv_name):
    lvm.create(lvm_vg.vg, lv_name, 4 * MiB)
    free_before = lvm.volume_group(lvm_vg.vg).free
    lvm.remove(lvm_vg.vg, lv_name)
    assert lvm.get_volume(lvm_vg.vg, lv_name) is None
    assert lvs_direct(lvm_vg, lv_name) == []
    assert lvm.volume_group(lvm_vg.vg).free == free_before + 4 * MiB
