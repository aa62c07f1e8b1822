from __future__ import annotations

import pytest

from storagectl.model import naming
from storagectl.model.layout import Role

U = "0c5d6c1e-0b0c-4c1b-8d2e-5b1f1b2f3a4b"


@pytest.mark.parametrize(
    "name, role",
    [
        ("disk", Role.ROOT),
        ("disk.local", Role.EPHEMERAL),
        ("disk.eph0", Role.EPHEMERAL),
        ("disk.eph12", Role.EPHEMERAL),
        ("disk.swap", Role.SWAP),
        ("disk.config", Role.CONFIG),
        ("disk.rescue", Role.RESCUE),
        ("disk.config.rescue", Role.RESCUE),
        ("kernel", Role.KERNEL),
        ("ramdisk", Role.RAMDISK),
        ("volume-1234", Role.UNKNOWN),
        ("disk.ephX", Role.UNKNOWN),
    ],
)
def test_role_of(name, role):
    assert naming.role_of(name) is role


def test_lv_names_double_underscores_and_round_trip():
    assert naming.lv_name(U, "disk.eph0") == f"{U}_disk.eph0"
    assert naming.lv_name(U, "my_disk") == f"{U}_my__disk"
    assert naming.parse_lv_name(naming.lv_name(U, "my_disk")) == (U, "my_disk")


@pytest.mark.parametrize("name", ["volume-1", f"{U}", f"{U}_", "x" * 36 + "_disk", f"{U}-disk"])
def test_non_instance_lv_names(name):
    assert naming.parse_lv_name(name) is None


def test_rbd_names():
    assert naming.rbd_image_name(U, "disk") == f"{U}_disk"
    assert naming.parse_rbd_image_name(f"{U}_disk.swap") == (U, "disk.swap")
    assert naming.parse_rbd_image_name("volume-abc") is None
