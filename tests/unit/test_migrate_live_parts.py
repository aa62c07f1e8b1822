"""The pure parts of live moves (issue #16): the live XML's copy jobs, the destination
<disk> of a block copy, live aliases in the scan, and qemu-img names opened without
QEMU's image locks. The moves themselves are tested against the real libvirtd
(tests/libvirtd/test_migrate_live.py) and Ceph (tests/ceph/test_migrate_live_rbd.py)."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from storagectl.backends import unlocked
from storagectl.host.hosts import resolve_live_aliases
from storagectl.migrate import live

LIVE = """<domain type='kvm'><name>i</name><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
  <source file='/i/u/disk' index='2'/>
  <mirror type='file' job='copy' ready='yes'>
    <format type='raw'/><source file='/i/u/disk.migrating' index='3'/>
  </mirror>
  <target dev='vda' bus='virtio'/><alias name='virtio-disk0'/></disk>
<disk type='network' device='disk'><driver name='qemu' type='raw'/>
  <source protocol='rbd' name='vms/u_disk.local'/><target dev='vdb' bus='virtio'/></disk>
<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
</devices></domain>"""


def test_mirrors_reads_each_disk_and_its_copy_job() -> None:
    m = live.mirrors(LIVE)
    assert m["vda"] == live.Mirror("/i/u/disk", "/i/u/disk.migrating", "yes")
    assert m["vdb"] == live.Mirror("vms/u_disk.local", None, None)
    assert m["hdc"] == live.Mirror(None, None, None)


def test_the_destination_disk_names_its_format_and_keeps_auth_in_the_source() -> None:
    src = ET.Element("source", {"protocol": "rbd", "name": "vms/u_disk"})
    ET.SubElement(src, "host", {"name": "10.0.0.1", "port": "6789"})
    xml = live.disk_xml("network", "raw", src, ("nova", "5b0f6c1e-0000-4c2d-8e3f-4a5b6c7d8e9f"))
    disk = ET.fromstring(xml)
    assert disk.get("type") == "network"
    assert disk.find("driver").get("type") == "raw"  # explicit: never probed
    auth = disk.find("source/auth")
    assert auth.get("username") == "nova" and auth.find("secret").get("type") == "ceph"
    assert disk.find("source/host").get("name") == "10.0.0.1"
    assert src.find("auth") is None  # the caller's element is left as it was
    xml = live.disk_xml("file", "qcow2", ET.Element("source", {"file": "/i/u/disk"}), None)
    assert ET.fromstring(xml).find("source/auth") is None


def _domain(path: str) -> str:
    return (
        "<domain><devices><disk type='file' device='disk'><driver type='raw'/>"
        f"<source file='{path}'/><target dev='vda'/></disk></devices></domain>"
    )


def test_a_live_alias_is_read_under_the_persistent_name(tmp_path: Path) -> None:
    disk, alias = tmp_path / "disk", tmp_path / "disk.migrating"
    disk.write_bytes(b"x")
    os.link(disk, alias)
    out = resolve_live_aliases(_domain(str(alias)), _domain(str(disk)))
    assert ET.fromstring(out).find(".//source").get("file") == str(disk)


def test_a_different_file_is_never_renamed_by_the_alias_rule(tmp_path: Path) -> None:
    disk, other = tmp_path / "disk", tmp_path / "disk.migrating"
    disk.write_bytes(b"x")
    other.write_bytes(b"x")  # same content, another inode: a real difference
    live_xml = _domain(str(other))
    assert resolve_live_aliases(live_xml, _domain(str(disk))) == live_xml
    # not the temporary name: never touched, even when it is the same file
    link = tmp_path / "elsewhere"
    os.link(disk, link)
    assert resolve_live_aliases(_domain(str(link)), _domain(str(disk))) == _domain(str(link))
    # garbage in, the live XML out
    assert resolve_live_aliases(live_xml, "<domain") == live_xml


def test_unlocked_names_open_every_local_file_without_locks(tmp_path: Path) -> None:
    f = tmp_path / "disk"
    f.write_bytes(b"")
    spec = json.loads(unlocked(str(f), "raw")[5:])
    assert spec == {
        "driver": "raw",
        "file": {"driver": "file", "filename": str(f), "locking": "off"},
    }
    chain = 'json:{"driver": "qcow2", "file": {"driver": "file", "filename": "/i/u/disk"}, '
    chain += '"backing": {"driver": "raw", "file": {"driver": "file", "filename": "/i/_base/b"}}}'
    spec = json.loads(unlocked(chain, "qcow2")[5:])
    assert spec["file"]["locking"] == "off" and spec["backing"]["file"]["locking"] == "off"
    assert unlocked("rbd:vms/u_disk:id=nova", "raw") == "rbd:vms/u_disk:id=nova"
    # a file under /dev (a tmpfs at /dev/shm) is a file, not a block device
    assert json.loads(unlocked("/dev/shm/nothing-here", "raw")[5:])["file"]["driver"] == "file"


def _plan(*moves: object) -> object:
    from storagectl.migrate.plan import Options, Plan

    u = "5eed0001-0000-4000-8000-000000000001"
    return Plan(u, "i", "qemu:///system", f"/i/{u}", Options(to="flat", live=True), list(moves))


def _move(name: str, role: str, src: object, dev: str | None = "vda") -> object:
    from storagectl.backends.files import FileLocation
    from storagectl.migrate.plan import DiskMove

    dest = FileLocation("flat", "raw", f"/i/u/{name}")
    return DiskMove(name, role, dev, 1 << 20, src, dest)


def test_what_cannot_move_live_is_refused_before_anything_happens() -> None:
    from storagectl.backends import Storage
    from storagectl.backends.files import FileLocation
    from storagectl.migrate.engine import live_refusal

    storage = Storage(None)  # type: ignore[arg-type] - no command runs
    qcow2 = FileLocation("qcow2", "qcow2", "/i/u/disk")
    assert live_refusal(_plan(_move("disk", "root", qcow2)), storage) is None
    ploop = FileLocation("ploop", "ploop", "/i/u/disk")
    why = live_refusal(_plan(_move("disk", "root", ploop)), storage)
    assert "ploop" in why and "offline only" in why and "shut it off" in why
    cfg = FileLocation("flat", "raw", "/i/u/disk.config")
    assert "config drive" in live_refusal(_plan(_move("disk.config", "config", cfg)), storage)
    assert "no target device" in live_refusal(_plan(_move("disk", "root", qcow2, None)), storage)


def test_a_live_move_into_a_thin_lv_is_refused_a_thick_one_is_not() -> None:
    from dataclasses import replace

    from storagectl.backends import Storage
    from storagectl.backends.files import FileLocation
    from storagectl.backends.lvm import LVMLocation
    from storagectl.migrate.engine import live_refusal

    storage = Storage(None)  # type: ignore[arg-type] - no command runs
    move = _move("disk", "root", FileLocation("flat", "raw", "/i/u/disk"))
    move.dest = LVMLocation(volume_group="nova", volume="u_disk")
    plan = _plan(move)
    assert live_refusal(plan, storage) is None  # thick
    plan.options = replace(plan.options, sparse_lvs=True)
    why = live_refusal(plan, storage)
    assert "thin LV" in why and "move it offline" in why


def test_a_guest_on_its_live_alias_is_a_warning_naming_disk_and_way_out(tmp_path: Path) -> None:
    from storagectl.host.domain import parse_domain_xml
    from storagectl.host.hosts import ScannedDomain, live_aliases_resolved
    from storagectl.inspect.inspection import live_alias_findings

    disk, alias = tmp_path / "disk", tmp_path / "disk.migrating"
    disk.write_bytes(b"x")
    os.link(disk, alias)

    def named(path: str) -> str:
        head = "<domain><name>vm1</name><uuid>9d1c5a0e-0f7c-4d0e-9a51-3b5f2f0c1a01</uuid>"
        return _domain(path).replace("<domain>", head)

    xml, aliases = live_aliases_resolved(named(str(alias)), named(str(disk)))
    assert aliases == [("vda", str(alias))]
    dom = ScannedDomain(parse_domain_xml(xml, where="test"), "running", tuple(aliases))
    [finding] = live_alias_findings(dom, "cn1")
    assert (finding.code, finding.severity.value, finding.disk) == (
        "running-on-live-alias",
        "warning",
        "disk",
    )
    assert str(alias) in finding.message and "cn1" in finding.message
    assert f"--delete-retained {dom.info.uuid}" in finding.message
    # the same domain on Nova's name: nothing to say
    xml, aliases = live_aliases_resolved(named(str(disk)), named(str(disk)))
    assert aliases == []
    dom = ScannedDomain(parse_domain_xml(xml, where="test"), "running")
    assert live_alias_findings(dom, "cn1") == []
