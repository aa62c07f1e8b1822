"""Guest LVM tier: real device-mapper inside the virtme-ng guest.

Run with ``.venv/bin/python -m tests.env.vng run-tier`` (one boot for the whole
tier); on the host these tests fail at the ``guest_vg`` fixture, by design.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from storagectl.backends.lvm import LVM, safe_tag

MiB = 1024 * 1024


@pytest.fixture
def lvm(guest_vg):
    return LVM(guest_vg.runner())


@pytest.fixture
def names(lvm, guest_vg):
    """Hands out Nova-style LV names; removes whatever of them still exists."""
    instance = str(uuid.uuid4())
    handed: list[str] = []

    def make(disk: str) -> str:
        handed.append(LVM.volume_name(instance, disk))
        return handed[-1]

    yield make
    for name in handed:
        if lvm.get_volume(guest_vg.vg, name) is not None:
            lvm.remove(guest_vg.vg, name)


def run(*argv: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout


def device_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def sha256_prefix(path: str | Path, length: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        remaining = length
        while remaining:
            chunk = fh.read(min(remaining, MiB))
            assert chunk, f"{path} is shorter than {length} bytes"
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def make_qcow2(tmp_path: Path, size: int, data: int) -> tuple[Path, Path]:
    """A raw file with ``data`` random bytes at the start and a marker at the end,
    and the qcow2 qemu-img makes of it."""
    raw = tmp_path / "src.raw"
    with open(raw, "wb") as fh:
        fh.write(os.urandom(data))
        fh.seek(size - 4096)
        fh.write(b"storagectl-end-marker".ljust(4096, b"\xa5"))
    qcow2 = tmp_path / "src.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))
    info = json.loads(run("qemu-img", "info", "--output=json", str(qcow2)))
    assert (info["format"], info["virtual-size"]) == ("qcow2", size)
    return raw, qcow2


def lvs_all(guest_vg) -> set[str]:
    out = guest_vg.run("lvs", "-a", "--noheadings", "-o", "lv_name", guest_vg.vg).stdout
    return {line.strip().strip("[]") for line in out.splitlines() if line.strip()}


def test_plain_lv_active_with_node_and_qcow2_round_trip(lvm, guest_vg, names, tmp_path):
    name = names("disk")
    lv = lvm.create(guest_vg.vg, name, 32 * MiB)
    assert lv.attr[4] == "a" and not lv.thin  # active, for real this time
    assert stat.S_ISBLK(os.stat(lv.path).st_mode)  # /dev/VG/LV -> /dev/dm-N
    assert device_size(lv.path) == 32 * MiB
    raw, qcow2 = make_qcow2(tmp_path, 32 * MiB, 6 * MiB)
    run("qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", str(qcow2), lv.path)
    run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(qcow2), lv.path)
    assert sha256_prefix(lv.path, 32 * MiB) == sha256_prefix(raw, 32 * MiB)
    lvm.remove(guest_vg.vg, name)
    assert not os.path.exists(lv.path)
    assert lvm.get_volume(guest_vg.vg, name) is None


def test_tags_with_real_activation(lvm, guest_vg, names):
    name = names("disk.config")
    record = safe_tag("storagectl.record", "/var/lib/nova/instances/x/storage.yaml")
    lvm.create(guest_vg.vg, name, 4 * MiB, tags=[record])
    lvm.add_tags(guest_vg.vg, name, ["storagectl.state=migrating"])
    assert set(lvm.get_volume(guest_vg.vg, name).tags) == {record, "storagectl.state=migrating"}
    lvm.remove_tags(guest_vg.vg, name, ["storagectl.state=migrating"])
    (listed,) = [v for v in lvm.list_volumes(guest_vg.vg) if v.name == name]
    assert listed.tags == (record,)


def test_sparse_lv_is_thin_in_a_private_pool_and_removed_with_it(lvm, guest_vg, names, tmp_path):
    name = names("disk.local")
    lv = lvm.create(guest_vg.vg, name, 1024 * MiB, sparse=True, tags=["storagectl.t=1"])
    assert (lv.thin, lv.size, lv.attr[0], lv.tags) == (True, 1024 * MiB, "V", ("storagectl.t=1",))
    assert device_size(lv.path) == 1024 * MiB
    assert f"{name}_pool" in lvs_all(guest_vg)
    assert f"{name}_pool" not in {v.name for v in lvm.list_volumes(guest_vg.vg)}
    # 8 MiB of data fits the 64 MiB pool and the rest of the 1 GiB reads as zeros -
    # but only with --target-is-zero (true of a new thin LV). Without it qemu-img
    # writes the zeros too, fills the pool, and still exits 0: the guest kernel
    # logs "lost async page write" and the data is silently incomplete.
    raw, qcow2 = make_qcow2(tmp_path, 1024 * MiB, 8 * MiB)
    run(
        "qemu-img", "convert", "-n", "--target-is-zero",
        "-f", "qcow2", "-O", "raw", str(qcow2), lv.path,
    )  # fmt: skip
    run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(qcow2), lv.path)
    assert sha256_prefix(lv.path, 8 * MiB) == sha256_prefix(raw, 8 * MiB)
    pool = guest_vg.run("lvs", "--noheadings", "-o", "data_percent", f"{guest_vg.vg}/{name}_pool")
    assert float(pool.stdout) < 25.0  # 8 MiB + the marker chunk of 64 MiB: still sparse
    lvm.remove(guest_vg.vg, name)
    assert not {name, f"{name}_pool", f"{name}_pool_tdata"} & lvs_all(guest_vg)
    assert not os.path.exists(lv.path)


def test_nova_made_sparse_lvs_are_recognised(lvm, guest_vg, names):
    # Nova's argv (nova/virt/libvirt/storage/lvm.py) and the legacy snapshot layout.
    thin, snap = names("disk.swap"), names("disk.eph1")
    guest_vg.run("lvcreate", "-L", "64m", "--virtualsize", "1g", "-n", thin, guest_vg.vg)
    guest_vg.run(
        "lvcreate", "--type", "snapshot", "-L", "64m", "--virtualsize", "1g",
        "-n", snap, guest_vg.vg,
    )  # fmt: skip
    volumes = {v.name: v for v in lvm.list_volumes(guest_vg.vg)}
    assert (volumes[thin].thin, volumes[thin].size) == (True, 1024 * MiB)
    assert (volumes[snap].thin, volumes[snap].size) == (True, 1024 * MiB)
    assert device_size(volumes[snap].path) == 1024 * MiB  # not lv_size (64 MiB COW)
    pool = guest_vg.run("lvs", "--noheadings", "-o", "pool_lv", f"{guest_vg.vg}/{thin}")
    pool_name = pool.stdout.strip()
    assert pool_name.startswith("lvol") and pool_name not in volumes
    lvm.remove(guest_vg.vg, thin)  # a pool it did not make stays
    assert pool_name in lvs_all(guest_vg)
    guest_vg.run("lvremove", "--yes", f"{guest_vg.vg}/{pool_name}")


def test_nodes_without_udev_and_vgmknodes(lvm, guest_vg, names, tmp_path):
    # virtme-ng-init runs systemd-udevd; without it lvm2 must make the nodes itself
    # (udev_rules = 0), and vgmknodes must repair a lost /dev/VG/LV link.
    from tests.env.lvm import lvm_environ, write_lvm_conf

    no_udev = tmp_path / "etc"
    write_lvm_conf(no_udev, [guest_vg.device], activation=True, udev=False)
    env = lvm_environ(no_udev)
    name = names("disk.noudev")
    run("lvcreate", "--yes", "-L", "4m", "-n", name, guest_vg.vg, env=env)
    path = Path("/dev", guest_vg.vg, name)
    assert stat.S_ISBLK(os.stat(path).st_mode)
    path.unlink()
    run("vgmknodes", guest_vg.vg, env=env)
    assert stat.S_ISBLK(os.stat(path).st_mode)
