"""Sandbox LVM instances: Nova's ``<uuid>_<disk>`` LVs in a real (metadata-only) VG."""

from __future__ import annotations

import configparser
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from storagectl.backends.lvm import LVM
from storagectl.sandbox import Sandbox, SandboxSpec, create_sandbox
from storagectl.sandbox.plan import plan_sandbox
from tests.env.lvm import LvmEnv

MiB = 1 << 20
ROOT_SIZE = 64 * MiB


@pytest.fixture(scope="module")
def lvm_sandbox(
    lvm_vg: LvmEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Sandbox, LVM]]:
    runner = lvm_vg.runner()
    lvm = LVM(runner)
    group = lvm.volume_group(lvm_vg.vg)
    root = tmp_path_factory.mktemp("sandbox-lvm") / "node"
    # The session VG is 1 GiB: flavors without ephemeral disks keep every LV small.
    spec = SandboxSpec(
        root=root, instances=6, seed=5, kinds=("qcow2", "flat", "lvm"), volume_group=lvm_vg.vg,
        virtual_size=ROOT_SIZE, flavors=("m1.tiny", "m1.swap"),
    )  # fmt: skip
    need = sum(
        -(-d.virtual_size // group.extent_size) * group.extent_size
        for i in plan_sandbox(spec).instances for d in i.record.disks if d.backend == "lvm"
    )  # fmt: skip
    assert need <= group.free // 2, f"VG {lvm_vg.vg} has {group.free} bytes free, need {need}"
    sandbox = create_sandbox(spec, runner)
    try:
        yield sandbox, lvm
    finally:
        # The VG is shared by the whole session: take our LVs away again.
        for inst in sandbox.instances:
            for disk in inst.disks:
                if disk.backend == "lvm" and lvm.get_volume(disk.vg, disk.lv):
                    lvm.remove(disk.vg, disk.lv)


def test_lvm_instances_get_one_lv_per_disk(lvm_sandbox: tuple[Sandbox, LVM], lvm_vg) -> None:
    sandbox, lvm = lvm_sandbox
    lvm_insts = [i for i in sandbox.instances if i.kind == "lvm"]
    assert len(lvm_insts) == 2
    assert {i.flavor for i in lvm_insts} == {"m1.tiny", "m1.swap"}
    planned = {d.lv: d for i in lvm_insts for d in i.disks if d.backend == "lvm"}
    found = {lv.name: lv for lv in lvm.list_volumes(lvm_vg.vg)}
    assert set(planned) <= set(found)
    for name, disk in planned.items():
        inst_uuid, disk_name = LVM.parse_volume_name(name)
        assert name == LVM.volume_name(inst_uuid, disk_name) == f"{inst_uuid}_{disk.name}"
        assert found[name].size >= disk.virtual_size
        assert not found[name].thin  # Nova's default: sparse_logical_volumes = False
        assert disk.path == f"/dev/{lvm_vg.vg}/{name}"


def test_lvm_disks_in_the_node_file_and_disk_info(lvm_sandbox: tuple[Sandbox, LVM]) -> None:
    sandbox, _ = lvm_sandbox
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(sandbox.uri)
    try:
        for inst in (i for i in sandbox.instances if i.kind == "lvm"):
            dom = ET.fromstring(conn.lookupByUUIDString(inst.uuid).XMLDesc(0))
            xml = {d.find("target").get("dev"): d for d in dom.iter("disk")}
            for disk in inst.disks:
                elem = xml[disk.target]
                if disk.backend == "lvm":
                    assert elem.get("type") == "block"
                    assert elem.find("source").get("dev") == disk.path
                    assert elem.find("driver").get("type") == "raw"
                    assert elem.find("driver").get("io") == "native"
                else:  # the config drive stays a local file
                    assert disk.name == "disk.config"
                    assert elem.find("source").get("file") == disk.path
            info_path = Path(inst.instance_dir) / "disk.info"
            # Nova's Lvm backend never writes disk.info; only the Flat config drive does.
            expected = {d.path: "raw" for d in inst.disks if d.name == "disk.config"}
            if expected:
                assert json.loads(info_path.read_text()) == expected
            else:
                assert not info_path.exists()
            assert (Path(inst.instance_dir) / "console.log").exists()
    finally:
        conn.close()


def test_nova_conf_names_the_volume_group(lvm_sandbox: tuple[Sandbox, LVM], lvm_vg) -> None:
    sandbox, _ = lvm_sandbox
    parser = configparser.ConfigParser()
    parser.read(sandbox.nova_conf)
    assert parser["libvirt"]["images_volume_group"] == lvm_vg.vg
    assert parser["libvirt"]["images_type"] == "default"
