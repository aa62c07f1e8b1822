"""The sandbox legacy node: real qemu-img files, a node file the libvirt test driver loads."""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
from click.testing import CliRunner

from storagectl.cli import cli
from storagectl.host.config import load_nova_config
from storagectl.sandbox import Sandbox, SandboxSpec, create_sandbox, load_sandbox
from storagectl.sandbox.iso import build_iso
from storagectl.sandbox.novaxml import mon_hosts_from_conf
from storagectl.sandbox.plan import ephemeral_name

MiB = 1 << 20
GiB = 1 << 30
NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"
SEED = 7
INSTANCES = 10


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    root = tmp_path_factory.mktemp("sandbox") / "node"
    return create_sandbox(SandboxSpec(root=root, instances=INSTANCES, seed=SEED))


@pytest.fixture(scope="module")
def domains(sandbox: Sandbox) -> dict[str, tuple[int, ET.Element]]:
    """uuid -> (state, parsed XMLDesc) as the libvirt test driver returns them."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(sandbox.uri)
    try:
        return {
            d.UUIDString(): (d.state()[0], ET.fromstring(d.XMLDesc(0)))
            for d in conn.listAllDomains()
        }
    finally:
        conn.close()


def qemu_img_info(path: str, fmt: str) -> dict:
    out = subprocess.run(
        ["qemu-img", "info", "-f", fmt, "--output=json", path],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return json.loads(out)


def qemu_io_read(path: str, fmt: str, pattern: int, offset: int, length: int) -> bool:
    """True when ``length`` bytes at ``offset`` all equal ``pattern`` (qemu-io read -P)."""
    res = subprocess.run(
        ["qemu-io", "-r", "-f", fmt, "-c", f"read -P {pattern} {offset} {length}", path],
        capture_output=True, text=True,
    )  # fmt: skip
    if "Pattern verification failed" in res.stdout:
        return False  # qemu-io also exits 1 then
    assert res.returncode == 0, res.stdout + res.stderr
    return True


def head(path: str, size: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)


def iso_file(path: Path, iso_path: str) -> bytes:
    """Read one file out of an ISO 9660 image by walking its directory records."""
    data = path.read_bytes()

    def entries(sector: int, size: int):
        pos, end = sector * 2048, sector * 2048 + size
        while pos < end:
            length = data[pos]
            if length == 0:  # records never span sectors: skip to the next one
                pos = (pos // 2048 + 1) * 2048
                continue
            extent, dsize = (
                struct.unpack_from("<I", data, pos + 2)[0],
                struct.unpack_from("<I", data, pos + 10)[0],
            )
            name = data[pos + 33 : pos + 33 + data[pos + 32]].decode("ascii")
            yield name, extent, dsize, bool(data[pos + 25] & 2)
            pos += length

    root = data[0x8000 + 156 : 0x8000 + 190]
    sector, size = struct.unpack_from("<I", root, 2)[0], struct.unpack_from("<I", root, 10)[0]
    *dirs, leaf = iso_path.split("/")
    for part in dirs:
        sector, size = next((e, s) for n, e, s, d in entries(sector, size) if d and n == part)
    sector, size = next((e, s) for n, e, s, d in entries(sector, size) if not d and n == leaf)
    return data[sector * 2048 : sector * 2048 + size]


def file_disks(sandbox: Sandbox):
    for inst in sandbox.instances:
        for disk in inst.disks:
            if disk.backend == "file":
                yield inst, disk


# -- the node file ---------------------------------------------------------------------


def test_manifest_covers_every_disk_kind_and_both_states(sandbox: Sandbox) -> None:
    assert len(sandbox.instances) == INSTANCES
    assert {i.kind for i in sandbox.instances} == {"qcow2", "flat"}
    names = {d.name for i in sandbox.instances for d in i.disks}
    assert {"disk", "disk.local", "disk.eph0", "disk.swap", "disk.config"} <= names
    for kind in ("qcow2", "flat"):
        states = {i.state for i in sandbox.instances if i.kind == kind}
        assert states == {"running", "shutoff"}, kind
    running = sum(1 for i in sandbox.instances if i.state == "running")
    assert running > INSTANCES // 2
    assert sandbox.uri == f"test://{sandbox.root}/node.xml"
    assert len({i.uuid for i in sandbox.instances}) == INSTANCES


def test_test_driver_lists_every_instance_with_its_disks(
    sandbox: Sandbox, domains: dict[str, tuple[int, ET.Element]]
) -> None:
    assert set(domains) == {i.uuid for i in sandbox.instances}
    for inst in sandbox.instances:
        state, dom = domains[inst.uuid]
        assert dom.findtext("name") == inst.name
        assert state == (libvirt.VIR_DOMAIN_SHUTOFF if inst.state == "shutoff"
                         else libvirt.VIR_DOMAIN_RUNNING)  # fmt: skip
        xml_disks = {d.find("target").get("dev"): d for d in dom.iter("disk")}
        assert set(xml_disks) == {d.target for d in inst.disks}
        for disk in inst.disks:
            elem = xml_disks[disk.target]
            assert elem.get("device") == disk.device
            assert elem.find("driver").get("type") == disk.format
            assert elem.find("driver").get("name") == "qemu"
            assert elem.find("driver").get("cache") == "none"
            assert elem.find("source").get("file") == disk.path
            assert elem.find("target").get("bus") == disk.bus
        if any(d.name == "disk.config" for d in inst.disks):
            assert xml_disks["hdd"].get("device") == "cdrom"


def test_domains_carry_nova_metadata_and_sysinfo(
    sandbox: Sandbox, domains: dict[str, tuple[int, ET.Element]]
) -> None:
    for inst in sandbox.instances:
        _, dom = domains[inst.uuid]
        meta = dom.find(f"metadata/{{{NOVA_NS}}}instance")
        assert meta is not None, inst.uuid
        assert meta.findtext(f"{{{NOVA_NS}}}name") == inst.display_name
        flavor = meta.find(f"{{{NOVA_NS}}}flavor")
        assert flavor.get("name") == inst.flavor
        assert meta.find(f"{{{NOVA_NS}}}root").get("uuid") == inst.image_id
        entries = {e.get("name"): e.text for e in dom.iter("entry")}
        assert entries["uuid"] == inst.uuid
        assert entries["product"] == "OpenStack Nova"
        swap_mb = int(flavor.findtext(f"{{{NOVA_NS}}}swap"))
        has_swap = any(d.name == "disk.swap" for d in inst.disks)
        assert has_swap == (swap_mb > 0)
        if has_swap:
            assert inst.disk("disk.swap").virtual_size == swap_mb * MiB


# -- files as Nova laid them out -----------------------------------------------------


def test_every_qcow2_is_backed_by_a_raw_file_in_base(sandbox: Sandbox) -> None:
    base_dir = sandbox.instances_path / "_base"
    qcow2 = [(i, d) for i, d in file_disks(sandbox) if d.format == "qcow2"]
    assert qcow2
    for _inst, disk in qcow2:
        info = qemu_img_info(disk.path, "qcow2")
        assert info["format"] == "qcow2"
        assert info["virtual-size"] == disk.virtual_size
        assert info["backing-filename"] == disk.backing_file
        assert Path(info["backing-filename"]).parent == base_dir
        assert info["backing-filename-format"] == "raw"
        base = qemu_img_info(info["backing-filename"], "raw")
        assert base["virtual-size"] <= disk.virtual_size
        check = subprocess.run(["qemu-img", "check", "-f", "qcow2", disk.path],
                               capture_output=True, text=True)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr


def test_flat_disks_are_raw_at_full_virtual_size(sandbox: Sandbox) -> None:
    flat = [(i, d) for i, d in file_disks(sandbox) if i.kind == "flat"]
    assert flat
    for _inst, disk in flat:
        assert disk.format == "raw" and disk.backing_file is None
        assert head(disk.path, 4) != b"QFI\xfb"
        if disk.name != "disk.config":
            assert os.stat(disk.path).st_size == disk.virtual_size


def test_base_files_follow_nova_naming(sandbox: Sandbox) -> None:
    base_dir = sandbox.instances_path / "_base"
    assert {p.name for p in base_dir.iterdir()} == {b.name for b in sandbox.bases}
    images = [b for b in sandbox.bases if b.role == "image"]
    assert [b.in_use for b in images].count(False) == 1  # one cache entry nobody uses
    used = {i.image_id for i in sandbox.instances}
    for base in images:
        assert base.name == hashlib.sha1(base.image_id.encode()).hexdigest()
        assert base.in_use == (base.image_id in used)
        mbr = head(base.path, 512)
        assert mbr[510:] == b"\x55\xaa" and mbr[446 + 4] == 0x83  # MBR, one Linux partition
    for tmpl in (b for b in sandbox.bases if b.role == "ephemeral"):
        gb = tmpl.virtual_size // GiB
        assert tmpl.name == ephemeral_name(gb) == f"ephemeral_{gb}_40d1d2c"
        with open(tmpl.path, "rb") as fh:
            fh.seek(1024 + 56)
            assert fh.read(2) == b"\x53\xef"  # ext4 superblock magic
    for tmpl in (b for b in sandbox.bases if b.role == "swap"):
        assert tmpl.name == f"swap_{tmpl.virtual_size // MiB}"
        with open(tmpl.path, "rb") as fh:
            fh.seek(4096 - 10)
            assert fh.read(10) == b"SWAPSPACE2"


def test_disk_info_matches_the_domain_xml(
    sandbox: Sandbox, domains: dict[str, tuple[int, ET.Element]]
) -> None:
    for inst in sandbox.instances:
        text = (Path(inst.instance_dir) / "disk.info").read_text()
        assert text.endswith("\n") and text.count("\n") == 1  # one JSON line, as Nova writes
        info = json.loads(text)
        _, dom = domains[inst.uuid]
        xml_formats = {
            d.find("source").get("file"): d.find("driver").get("type") for d in dom.iter("disk")
        }
        assert info == xml_formats
        assert list(info) == [d.path for d in inst.disks]  # Nova's order: disk, eph, swap, config
        assert (Path(inst.instance_dir) / "console.log").stat().st_size == 0


def test_files_are_sparse(sandbox: Sandbox) -> None:
    for base in sandbox.bases:
        st = os.stat(base.path)
        assert st.st_size == base.virtual_size
        assert st.st_blocks * 512 <= max(st.st_size // 8, 4 * MiB), base.path
    for _inst, disk in file_disks(sandbox):
        st = os.stat(disk.path)
        if disk.format == "qcow2":
            assert st.st_blocks * 512 < MiB, disk.path
        elif disk.name != "disk.config":
            assert st.st_blocks * 512 <= st.st_size // 64, disk.path


def test_base_data_and_guest_writes_read_back_through_qemu(sandbox: Sandbox) -> None:
    for inst in sandbox.instances:
        disk = inst.disk("disk")
        marker = inst.guest_marker
        assert marker is not None and marker["disk"] == "disk"
        args = (disk.path, disk.format)
        assert qemu_io_read(*args, marker["pattern"], marker["offset"], marker["length"])
        assert not qemu_io_read(*args, marker["pattern"] ^ 0xFF, marker["offset"], 512)
        # The image's MBR signature, read through the overlay for qcow2 roots.
        assert qemu_io_read(*args, 0x55, 510, 1) and qemu_io_read(*args, 0xAA, 511, 1)
        stamp = Path(next(b.path for b in sandbox.bases if b.image_id == inst.image_id))
        with open(stamp, "rb") as fh:
            fh.seek(MiB + 4096)
            assert fh.read(100).startswith(
                f"storagectl-sandbox image {inst.image_id} block 00000001".encode()
            )


def test_config_drives_are_iso9660_holding_the_metadata(sandbox: Sandbox) -> None:
    with_cd = [i for i in sandbox.instances if any(d.name == "disk.config" for d in i.disks)]
    assert with_cd
    for inst in with_cd:
        path = Path(inst.disk("disk.config").path)
        assert inst.disk("disk.config").virtual_size == path.stat().st_size
        blkid = subprocess.run(["blkid", "-p", "-o", "export", str(path)],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "TYPE=iso9660" in blkid and "LABEL=config-2" in blkid
        meta = json.loads(iso_file(path, "OPENSTACK/LATEST/META_DATA.JSON;1"))
        assert meta["uuid"] == inst.uuid and meta["name"] == inst.display_name


def test_nova_conf_reads_as_a_legacy_default_host(sandbox: Sandbox) -> None:
    parser = configparser.ConfigParser()
    parser.read(sandbox.nova_conf)
    assert parser["DEFAULT"]["instances_path"] == str(sandbox.instances_path)
    assert parser["DEFAULT"]["state_path"] == str(sandbox.root)
    conf = load_nova_config([sandbox.nova_conf])
    assert conf.instances_path == str(sandbox.instances_path)
    assert conf.use_cow_images and conf.force_raw_images
    assert conf.images_type == "default"
    assert not parser.has_option("libvirt", "images_volume_group")


# -- determinism and the manifest -----------------------------------------------------


def _normalised(root: Path, text: str) -> str:
    return text.replace(str(root), "ROOT")


def test_same_seed_same_sandbox_other_seed_other_one(sandbox: Sandbox, tmp_path: Path) -> None:
    again = create_sandbox(SandboxSpec(root=tmp_path / "again", instances=INSTANCES, seed=SEED))
    other = create_sandbox(SandboxSpec(root=tmp_path / "other", instances=INSTANCES, seed=SEED + 1))

    def manifest(sb: Sandbox) -> dict:
        data = json.loads(_normalised(sb.root, sb.manifest.read_text()))
        del data["build_seconds"]
        return data

    assert manifest(again) == manifest(sandbox)
    for name in ("node.xml", "etc/nova/nova.conf"):
        assert _normalised(again.root, (again.root / name).read_text()) == _normalised(
            sandbox.root, (sandbox.root / name).read_text()
        )

    def tree(sb: Sandbox) -> dict[str, object]:
        # Text files name the root (whose length differs): compare them normalised.
        text = {"disk.info", "node.xml", "nova.conf", "sandbox.json"}
        return {
            str(p.relative_to(sb.root)): (
                _normalised(sb.root, p.read_text()) if p.name in text else p.stat().st_size
            )
            for p in sb.root.rglob("*") if p.is_file() and p.name != "sandbox.json"
        }  # fmt: skip

    assert tree(again) == tree(sandbox)
    for base in (b for b in sandbox.bases if b.role == "image"):
        twin = again.root / Path(base.path).relative_to(sandbox.root)
        # The MBR and the stamped data area live in the first 4 MiB.
        assert head(base.path, 4 * MiB) == head(str(twin), 4 * MiB)
    assert {i.uuid for i in other.instances}.isdisjoint({i.uuid for i in sandbox.instances})


def test_load_sandbox_reads_the_manifest_back(sandbox: Sandbox) -> None:
    loaded = load_sandbox(sandbox.root)
    assert loaded.instances == sandbox.instances
    assert loaded.bases == sandbox.bases
    assert (loaded.uri, loaded.nova_conf, loaded.node_xml) == (
        sandbox.uri, sandbox.nova_conf, sandbox.node_xml)  # fmt: skip


def test_create_refuses_a_non_empty_root(tmp_path: Path) -> None:
    (tmp_path / "precious").write_text("keep me")
    from storagectl.errors import UsageError

    with pytest.raises(UsageError, match="not empty"):
        create_sandbox(SandboxSpec(root=tmp_path, instances=1))
    assert [p.name for p in tmp_path.iterdir()] == ["precious"]


# -- the CLI -------------------------------------------------------------------------


def _cli(tmp_path: Path, *args: str):
    return CliRunner().invoke(
        cli, ["--log-file", str(tmp_path / "storagectl.log"), "sandbox", "create", *args]
    )


def test_cli_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "something").write_text("x")
    res = _cli(tmp_path, str(target), "-n", "2")
    assert res.exit_code == 2
    assert "--> UsageError:" in res.stderr and "is not empty" in res.stderr
    assert [p.name for p in target.iterdir()] == ["something"]


def test_cli_refuses_lvm_without_a_volume_group(tmp_path: Path) -> None:
    res = _cli(tmp_path, str(tmp_path / "new"), "--with", "lvm")
    assert res.exit_code == 2
    assert "--with lvm needs --volume-group VG" in res.stderr
    assert not (tmp_path / "new").exists()


def test_cli_builds_and_says_how_to_use_it(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    res = _cli(tmp_path, str(target), "-n", "3", "--seed", "3", "--root-size", "64M")
    assert res.exit_code == 0, res.stderr
    assert f"-c test://{target}/node.xml" in res.stdout
    assert f"--nova-conf {target}/etc/nova/nova.conf" in res.stdout
    loaded = load_sandbox(target)
    assert len(loaded.instances) == 3 and loaded.seed == 3
    assert all(i.disk("disk").virtual_size == 64 * MiB for i in loaded.instances)


# -- small pure pieces ---------------------------------------------------------------


def test_mon_hosts_from_the_ceph_conf_spellings() -> None:
    assert mon_hosts_from_conf("[global]\nmon host = [v2:127.0.0.1:3300]\n") == (
        ("127.0.0.1", "3300"),)  # fmt: skip
    assert mon_hosts_from_conf("mon_host = [v2:10.0.0.1:3300/0,v1:10.0.0.1:6789/0], "
                               "[v2:10.0.0.2:3300/0,v1:10.0.0.2:6789/0]") == (
        ("10.0.0.1", "6789"), ("10.0.0.2", "6789"))  # fmt: skip
    assert mon_hosts_from_conf("[global]\nfsid = x\n") == ()


def test_iso_writer_nests_directories(tmp_path: Path) -> None:
    files = {"a/b/c.json": b'{"x": 1}', "a/d.txt": b"y" * 5000, "top": b"t"}
    path = tmp_path / "x.iso"
    path.write_bytes(build_iso(files, label="config-2", publisher="p", stamp=0))
    assert iso_file(path, "A/B/C.JSON;1") == b'{"x": 1}'
    assert iso_file(path, "A/D.TXT;1") == b"y" * 5000
    assert iso_file(path, "TOP.;1") == b"t"
