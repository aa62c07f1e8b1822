"""Smoke tests against a real libvirtd with the QEMU driver (qemu:///system).

They pin the libvirt facts storagectl's migrations rely on: persistent domains
keep Nova's ``<metadata>``; a live blockCopy of a qcow2-on-raw-base disk to a
standalone raw file pivots and rewrites the *persistent* definition; the copy
is guest-identical. Every domain is removed and every file deleted by the
fixtures (``libvirt_workdir``, ``Libvirtd.define`` tracking) even on failure.

Figures on the 2-core CI machine (libvirt 9.0, QEMU 7.2, KVM; medians of 3):
libvirtd start 2.6 s when started here (0.4 s to answer + the KVM probe; the
very first start on a fresh machine adds ~8 s of QEMU capability probing),
define 3 ms, start 0.57 s, destroy 1.4-1.8 s (QEMU itself needs 1-1.4 s to exit
on SIGTERM here), blockCopy + pivot of a 64 MiB disk 0.2 s with 12 MiB of data,
1.1 s with 56 MiB. This module: 6 tests in about 22 s.
"""

from __future__ import annotations

import os
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from tests.env.libvirtd import (
    NOVA_NS,
    Libvirtd,
    disk_source,
    minimal_domain_xml,
    remove_domain,
    wait_mirror_ready,
)

MiB = 1024 * 1024
DISK_SIZE = 64 * MiB
NS = {"nova": NOVA_NS}


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True)


@pytest.fixture
def qcow2_on_raw(libvirt_workdir: Path) -> Path:
    """A qcow2 overlay (64 MiB) on a raw base; both layers hold distinct data.

    Base: 0xa1 in [0, 16M), 0xb2 in [32M, 40M). Overlay: 0xc3 in [8M, 12M)
    (shadows the base) and 0xd4 in [48M, 52M) (where the base is a hole).
    """
    base = libvirt_workdir / "base.raw"
    overlay = libvirt_workdir / "disk"
    _run("qemu-img", "create", "-f", "raw", str(base), str(DISK_SIZE))
    _run(
        "qemu-io", "-f", "raw", "-c", "write -P 0xa1 0 16M", "-c", "write -P 0xb2 32M 8M", str(base)
    )
    # -F raw: libvirt >= 6.0 refuses an overlay whose header lacks the backing format.
    _run("qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(overlay))
    _run(
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0xc3 8M 4M",
        "-c",
        "write -P 0xd4 48M 4M",
        str(overlay),
    )
    return overlay


def _new_name() -> tuple[str, str]:
    return f"storagectl-test-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())


def _disk_element(xml: str, target_dev: str) -> ET.Element:
    for disk in ET.fromstring(xml).iter("disk"):
        target = disk.find("target")
        if target is not None and target.get("dev") == target_dev:
            return disk
    raise AssertionError(f"no disk {target_dev} in {xml}")


def _qemu_pid(name: str) -> int:
    return int(Path(f"/var/run/libvirt/qemu/{name}.pid").read_text().strip())


def test_defined_domain_is_listed_by_name_and_uuid_with_metadata(
    libvirtd: Libvirtd, qcow2_on_raw: Path
) -> None:
    name, uid = _new_name()
    dom = libvirtd.define(
        minimal_domain_xml(name, uid, [(str(qcow2_on_raw), "qcow2", "vda")], libvirtd.domain_type)
    )
    # A second connection sees it: the state lives in the daemon, unlike test:///.
    other = libvirt.open(libvirtd.uri)
    try:
        assert name in other.listDefinedDomains()
        assert other.lookupByName(name).UUIDString() == uid
        assert other.lookupByUUIDString(uid).name() == name
        persistent = {
            d.name() for d in other.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)
        }
        assert name in persistent
    finally:
        other.close()
    assert dom.isPersistent() and not dom.isActive()

    inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    instance = ET.fromstring(inactive).find("metadata/nova:instance", NS)
    assert instance is not None, inactive
    assert instance.findtext("nova:name", namespaces=NS) == name
    assert instance.find("nova:flavor", NS).get("name") == "m1.tiny"
    assert instance.find("nova:owner/nova:project", NS).text == "admin"
    # libvirt's metadata API returns the same element but with its namespace
    # stripped: "<instance><name>..." (unqualified), unlike the domain XML.
    element = ET.fromstring(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NOVA_NS))
    assert element.tag == "instance"
    assert element.findtext("name") == name

    disk = _disk_element(inactive, "vda")
    assert disk.get("type") == "file"
    assert disk.find("driver").get("type") == "qcow2"
    assert disk_source(inactive, "vda") == str(qcow2_on_raw)

    remove_domain(dom)
    with pytest.raises(libvirt.libvirtError) as err:
        libvirtd.connect().lookupByName(name)
    assert err.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN


def test_domain_starts_and_is_destroyed(libvirtd: Libvirtd, qcow2_on_raw: Path) -> None:
    name, uid = _new_name()
    dom = libvirtd.define(
        minimal_domain_xml(name, uid, [(str(qcow2_on_raw), "qcow2", "vda")], libvirtd.domain_type)
    )
    dom.create()
    try:
        assert dom.isActive()
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        pid = _qemu_pid(name)
        assert Path(f"/proc/{pid}/comm").read_text().startswith("qemu-system")
        # The guest's disk is open through the whole chain: QEMU reports its size.
        capacity, _allocation, _physical = dom.blockInfo("vda")
        assert capacity == DISK_SIZE
        live = dom.XMLDesc(0)
        assert ET.fromstring(live).get("type") == libvirtd.domain_type
        # The live XML shows the backing chain libvirt read from the qcow2 header.
        backing = _disk_element(live, "vda").find("backingStore")
        assert backing is not None and backing.find("format").get("type") == "raw"
        assert backing.find("source").get("file") == str(qcow2_on_raw.parent / "base.raw")
    finally:
        dom.destroy()
    assert not dom.isActive()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    assert not Path(f"/proc/{pid}").exists()
    assert name in libvirtd.connect().listDefinedDomains()


@pytest.mark.parametrize("reuse_ext", [False, True], ids=["libvirt-creates", "precreated"])
def test_blockcopy_qcow2_on_raw_to_standalone_raw_with_pivot(
    libvirtd: Libvirtd, qcow2_on_raw: Path, reuse_ext: bool
) -> None:
    name, uid = _new_name()
    dest = qcow2_on_raw.parent / "disk.raw"
    dom = libvirtd.define(
        minimal_domain_xml(name, uid, [(str(qcow2_on_raw), "qcow2", "vda")], libvirtd.domain_type)
    )
    dom.create()
    try:
        dest_xml = f"<disk type='file'><driver type='raw'/><source file='{dest}'/></disk>"
        flags = libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB
        if reuse_ext:
            # What Nova does: create the destination itself, libvirt only copies.
            _run("qemu-img", "create", "-f", "raw", str(dest), str(DISK_SIZE))
            flags |= libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT

        # A persistent domain refuses a copy job that would outlive a restart.
        with pytest.raises(libvirt.libvirtError, match="not transient") as err:
            dom.blockCopy(
                "vda", dest_xml, None, flags & ~libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB
            )
        assert err.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID

        dom.blockCopy("vda", dest_xml, None, flags)
        wait_mirror_ready(dom, "vda", timeout=60)
        dom.blockJobAbort("vda", libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        assert dom.blockJobInfo("vda", 0) == {}  # no job left

        for xml in (dom.XMLDesc(0), dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)):
            disk = _disk_element(xml, "vda")
            assert disk_source(xml, "vda") == str(dest)
            assert disk.find("driver").get("type") == "raw"
            assert disk.find("mirror") is None
            backing = disk.find("backingStore")
            assert backing is None or len(backing) == 0, "the copy must be standalone"
    finally:
        dom.destroy()

    compare = subprocess.run(
        ["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(qcow2_on_raw), str(dest)],
        capture_output=True,
        text=True,
    )
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert "Images are identical" in compare.stdout
    info = _run("qemu-img", "info", "--output=json", str(dest)).stdout
    assert '"format": "raw"' in info and "backing-filename" not in info
    assert os.path.getsize(dest) == DISK_SIZE

    # The rewritten persistent definition boots on the copy alone.
    dom.create()
    try:
        assert dom.blockInfo("vda")[0] == DISK_SIZE
        assert disk_source(dom.XMLDesc(0), "vda") == str(dest)
    finally:
        dom.destroy()


def test_block_disk_on_regular_file_is_refused(libvirtd: Libvirtd, libvirt_workdir: Path) -> None:
    """Nova's LVM layout is ``<disk type='block'>`` on /dev/VG/LV. There is no
    device-mapper on this host, and QEMU's host_device driver will not take a
    regular file in its place, so LVM-backed domains need a loop device (below)
    or the virtme-ng guest."""
    plain = libvirt_workdir / "plain.raw"
    _run("qemu-img", "create", "-f", "raw", str(plain), str(DISK_SIZE))
    name, uid = _new_name()
    xml = minimal_domain_xml(name, uid, [(str(plain), "raw", "vda")], libvirtd.domain_type)
    xml = xml.replace('<disk type="file"', '<disk type="block"').replace(
        f'file="{plain}"', f'dev="{plain}"'
    )
    dom = libvirtd.define(xml)  # libvirt itself accepts the definition...
    with pytest.raises(libvirt.libvirtError) as err:
        dom.create()  # ...QEMU refuses it at start
    assert "'host_device' driver requires" in str(err.value)
    assert "block device" in str(err.value)
    assert not dom.isActive()


def test_block_disk_on_loop_device_copies_to_file(
    libvirtd: Libvirtd, libvirt_workdir: Path
) -> None:
    """The closest stand-in for an LVM LV on this host: a loop device as a
    ``<disk type='block'>``, block-copied to a file (Nova LVM -> flat layout)."""
    backing = libvirt_workdir / "lv.img"
    dest = libvirt_workdir / "disk.raw"
    _run("qemu-img", "create", "-f", "raw", str(backing), str(DISK_SIZE))
    _run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 4M 4M", str(backing))
    loop = _run("losetup", "--find", "--show", str(backing)).stdout.strip()
    try:
        name, uid = _new_name()
        dom = libvirtd.define(
            minimal_domain_xml(name, uid, [(loop, "raw", "vda")], libvirtd.domain_type)
        )
        assert _disk_element(dom.XMLDesc(0), "vda").get("type") == "block"
        dom.create()
        try:
            dom.blockCopy(
                "vda",
                f"<disk type='file'><driver type='raw'/><source file='{dest}'/></disk>",
                None,
                libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB,
            )
            wait_mirror_ready(dom, "vda", timeout=60)
            dom.blockJobAbort("vda", libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        finally:
            dom.destroy()
        inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert _disk_element(inactive, "vda").get("type") == "file"
        assert disk_source(inactive, "vda") == str(dest)
        compare = _run("qemu-img", "compare", "-f", "raw", "-F", "raw", loop, str(dest))
        assert "Images are identical" in compare.stdout
        remove_domain(dom)
    finally:
        subprocess.run(["losetup", "--detach", loop], check=False)
