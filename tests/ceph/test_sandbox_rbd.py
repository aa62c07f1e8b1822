"""Sandbox RBD instances: Nova's ``<uuid>_<disk>`` images in a real Ceph pool."""

from __future__ import annotations

import configparser
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from storagectl.backends.rbd import RBD
from storagectl.sandbox import Sandbox
from tests.env.ceph import CephCluster, rbd_sandbox

MiB = 1 << 20


@pytest.fixture(scope="module", name="rbd_sandbox")
def rbd_sandbox_fixture(
    ceph_cluster: CephCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Sandbox, RBD]]:
    root = tmp_path_factory.mktemp("sandbox-rbd") / "node"
    with rbd_sandbox(ceph_cluster, root, instances=6, seed=11, kinds=("qcow2", "rbd")) as made:
        yield made


def _rbd_disks(sandbox: Sandbox):
    for inst in sandbox.instances:
        for disk in inst.disks:
            if disk.backend == "rbd":
                yield inst, disk


def test_rbd_images_exist_with_nova_names_and_sizes(rbd_sandbox: tuple[Sandbox, RBD]) -> None:
    sandbox, rbd = rbd_sandbox
    rbd_insts = [i for i in sandbox.instances if i.kind == "rbd"]
    assert len(rbd_insts) == 3
    images = set(rbd.list_images())
    for inst, disk in _rbd_disks(sandbox):
        assert disk.image == RBD.volume_name(inst.uuid, disk.name)
        assert disk.image in images
        assert rbd.info(disk.image).size == disk.virtual_size


def test_rbd_root_holds_the_base_image(rbd_sandbox: tuple[Sandbox, RBD]) -> None:
    sandbox, rbd = rbd_sandbox
    for inst in (i for i in sandbox.instances if i.kind == "rbd"):
        base = next(b for b in sandbox.bases if b.image_id == inst.image_id)
        root = inst.disk("disk")
        res = subprocess.run(
            ["qemu-img", "compare", "-f", "raw", "-F", "raw", base.path,
             rbd.qemu_uri(root.image)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        assert inst.guest_marker is None  # nothing but the image was written


def test_rbd_config_drive_is_imported_and_the_local_copy_gone(
    rbd_sandbox: tuple[Sandbox, RBD], tmp_path: Path
) -> None:
    sandbox, rbd = rbd_sandbox
    with_cd = [i for i in sandbox.instances if i.kind == "rbd" and
               any(d.name == "disk.config" for d in i.disks)]  # fmt: skip
    assert with_cd, "seed 11 should give an RBD instance a config drive"
    for inst in with_cd:
        disk = inst.disk("disk.config")
        assert disk.backend == "rbd" and disk.device == "cdrom"
        assert not (Path(inst.instance_dir) / "disk.config").exists()
        copy = tmp_path / f"{inst.uuid}.iso"
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "raw", rbd.qemu_uri(disk.image), str(copy)],
            capture_output=True, check=True,
        )  # fmt: skip
        assert copy.stat().st_size == disk.virtual_size
        pvd = copy.read_bytes()[16 * 2048 : 17 * 2048]
        assert pvd[1:6] == b"CD001" and pvd[40:48] == b"config-2"


def test_rbd_disks_in_the_node_file(rbd_sandbox: tuple[Sandbox, RBD], ceph_cluster) -> None:
    sandbox, _ = rbd_sandbox
    conf = configparser.ConfigParser()
    conf.read(sandbox.nova_conf)
    assert conf["libvirt"]["images_rbd_pool"] == ceph_cluster.pool
    assert conf["libvirt"]["images_rbd_ceph_conf"] == str(ceph_cluster.conf)
    secret = conf["libvirt"]["rbd_secret_uuid"]
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(sandbox.uri)
    try:
        for inst in (i for i in sandbox.instances if i.kind == "rbd"):
            dom = ET.fromstring(conn.lookupByUUIDString(inst.uuid).XMLDesc(0))
            xml = {d.find("target").get("dev"): d for d in dom.iter("disk")}
            assert set(xml) == {d.target for d in inst.disks}
            for disk in inst.disks:
                elem = xml[disk.target]
                assert elem.get("type") == "network"
                source = elem.find("source")
                assert source.get("protocol") == "rbd"
                assert source.get("name") == f"{ceph_cluster.pool}/{disk.image}"
                host = source.find("host")
                assert host.get("name") == "127.0.0.1"
                assert host.get("port") == str(ceph_cluster.port)
                auth = elem.find("auth")
                assert auth.get("username") == ceph_cluster.user
                assert auth.find("secret").get("type") == "ceph"
                assert auth.find("secret").get("uuid") == secret
            # Nova's Rbd backend writes no disk.info, and the config drive left the host.
            assert not (Path(inst.instance_dir) / "disk.info").exists()
            assert (Path(inst.instance_dir) / "console.log").exists()
    finally:
        conn.close()
