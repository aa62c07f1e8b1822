"""Host LVM tier: the metadata-only environment itself (tests/env/lvm.py)."""

from __future__ import annotations

import json
from pathlib import Path

from storagectl.backends.lvm import LVM


def test_vg_is_visible_through_the_private_lvm_conf(lvm_vg):
    out = lvm_vg.run(
        "vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "vg_name,pv_count"
    ).stdout
    rows = json.loads(out)["report"][0]["vg"]
    assert rows == [{"vg_name": lvm_vg.vg, "pv_count": "1"}]  # global_filter: only our PV
    group = LVM(lvm_vg.runner()).volume_group(lvm_vg.vg)
    assert group.name == lvm_vg.vg
    assert 1000 * 1024**2 < group.size <= 1024**3  # 1 GiB PV minus metadata area


def test_activation_is_disabled_and_nothing_lands_in_etc_lvm(lvm_vg):
    conf = lvm_vg.run("lvmconfig", "global/activation", "backup/backup_dir").stdout.split()
    assert conf == ["activation=0", f'backup_dir="{lvm_vg.system_dir / "backup"}"']
    assert (lvm_vg.system_dir / "backup" / lvm_vg.vg).is_file()  # vgcreate's backup
    assert not Path("/etc/lvm/backup", lvm_vg.vg).exists()
    assert not Path("/etc/lvm/archive").exists() or not any(
        p.name.startswith(lvm_vg.vg) for p in Path("/etc/lvm/archive").iterdir()
    )


def test_loop_device_backs_the_pv(lvm_vg):
    assert lvm_vg.device.startswith("/dev/loop")
    back = lvm_vg.run("losetup", "--list", "--noheadings", "-O", "BACK-FILE", lvm_vg.device)
    assert back.stdout.strip() == str(lvm_vg.image)
