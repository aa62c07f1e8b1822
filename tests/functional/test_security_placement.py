"""Issue #13 class 3: disks that are not where they should be are critical, inspected, and
never recorded; a record is checked against the domain XML in both directions; the
domain XML's ``<backingStore>`` is judged like a header's backing file.

Real images made with qemu-img, domains served by the libvirt test driver (mini node).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.functional.conftest import codes, qemu_img

MiB = 1 << 20


def host_file(tmp_path: Path) -> Path:
    path = tmp_path / "host" / "secret.img"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"HOST-SECRET" * 1000)
    return path


def critical(inst: dict, code: str, disk: str) -> list[dict]:
    hits = [f for f in inst["findings"] if f["code"] == code and f["disk"] == disk]
    assert hits and all(f["severity"] == "critical" for f in hits), inst["findings"]
    return hits


def refused(node, u: str) -> None:
    status, out, _ = node.run("persist", u, "-o", "json")
    assert status == 1 and "refused" in out
    assert not (node.instances / u / "storage.yaml").exists()


def hostile_raw(path: Path, backing: str) -> None:
    """A raw disk whose first sector a guest overwrote with a qcow2 header."""
    hdr = path.with_name(path.name + ".hdr")
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", str(hdr), "1G")
    data = bytearray(4 * MiB)
    head = hdr.read_bytes()[:65536]
    data[: len(head)] = head
    hdr.unlink()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["host-file", "device", "other-instance", "image-cache"])
def test_disk_symlinked_out_of_its_instance_dir_is_critical(mini_node, tmp_path, where):
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    if where == "host-file":
        target = host_file(tmp_path)
    elif where == "device":
        target = Path("/dev/zero")
    elif where == "other-instance":
        other = mini_node.dir(mini_node.new_uuid())
        target = other / "disk"
        qemu_img("create", "-q", "-f", "raw", str(target), str(MiB))
    else:
        target = mini_node.base / ("a" * 40)
        qemu_img("create", "-q", "-f", "raw", str(target), str(MiB))
    (d / "disk").symlink_to(target)
    mini_node.add(u, [{"fmt": "raw", "src": d / "disk"}])
    inst = mini_node.instance(u)
    hits = critical(inst, "disk-outside-instance-dir", "disk")
    assert any(str(target) in f["message"] for f in hits)
    assert inst["disks"][0]["virtual_size"] is None  # the host file's size is not taken
    refused(mini_node, u)


def test_device_node_in_the_instance_dir_is_critical(mini_node):
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    os.mkfifo(d / "disk")
    mini_node.add(u, [{"fmt": "raw", "src": d / "disk"}])
    critical(mini_node.instance(u), "disk-outside-instance-dir", "disk")
    refused(mini_node, u)


def test_file_disk_outside_the_instance_dir_is_inspected(mini_node, tmp_path):
    u = mini_node.new_uuid()
    mini_node.dir(u)
    secret = host_file(tmp_path)
    elsewhere = tmp_path / "srv" / "guest.qcow2"
    elsewhere.parent.mkdir()
    qemu_img(
        "create", "-q", "-f", "qcow2", "-u", "-b", str(secret), "-F", "raw", str(elsewhere), "1G"
    )
    mini_node.add(u, [{"fmt": "qcow2", "src": elsewhere}])
    inst = mini_node.instance(u)
    critical(inst, "backing-file-outside-cache", "guest.qcow2")
    critical(inst, "disk-outside-instance-dir", "guest.qcow2")


@pytest.mark.parametrize("declared", ["raw", "qcow2"])
def test_volume_files_are_inspected(mini_node, tmp_path, declared):
    u = mini_node.new_uuid()
    mini_node.dir(u)
    secret = host_file(tmp_path)
    mnt = mini_node.root / "mnt" / "nfs-share"
    mnt.mkdir(parents=True)
    vol = mnt / "volume-11111111-2222-3333-4444-555555555555"
    if declared == "raw":
        hostile_raw(vol, str(secret))
        code = "raw-disk-has-image-header"
    else:
        qemu_img(
            "create", "-q", "-f", "qcow2", "-u", "-b", str(secret), "-F", "raw", str(vol), "1G"
        )
        code = "backing-file-outside-cache"
    mini_node.add(u, [{"fmt": declared, "src": vol}])
    inst = mini_node.instance(u)
    assert inst["disks"][0]["backend"] == "volume"
    critical(inst, code, vol.name)


def test_volume_snapshot_chain_in_its_own_directory_is_fine(mini_node):
    """Cinder's NFS driver keeps qcow2 snapshots of a volume next to it."""
    u = mini_node.new_uuid()
    mini_node.dir(u)
    mnt = mini_node.root / "mnt" / "nfs-share"
    mnt.mkdir(parents=True)
    vol = mnt / "volume-11111111-2222-3333-4444-555555555555"
    qemu_img("create", "-q", "-f", "raw", str(vol), str(MiB))
    snap = mnt / f"{vol.name}.abcdef"
    qemu_img("create", "-q", "-f", "qcow2", "-b", vol.name, "-F", "raw", str(snap))
    mini_node.add(u, [{"fmt": "qcow2", "src": snap}])
    assert mini_node.instance(u)["findings"] == []


def persisted(node) -> tuple[str, Path]:
    u = node.new_uuid()
    d = node.dir(u)
    qemu_img("create", "-q", "-f", "raw", str(d / "disk"), str(4 * MiB))
    qemu_img("create", "-q", "-f", "raw", str(d / "disk.local"), str(4 * MiB))
    node.add(u, [{"fmt": "raw", "src": d / "disk"}, {"fmt": "raw", "src": d / "disk.local"}])
    status, _, err = node.run("persist", u)
    assert status == 0, err
    return u, d


def edit_record(d: Path, change) -> None:
    path = d / "storage.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def test_record_pointing_outside_instances_path_is_critical(mini_node, tmp_path):
    u, d = persisted(mini_node)
    elsewhere = tmp_path / "elsewhere" / u
    elsewhere.mkdir(parents=True)
    secret = elsewhere / "disk"
    secret.write_bytes(b"HOST-SECRET" * 1000)

    def move(data):
        data["disks"][0]["location"]["path"] = str(secret)

    edit_record(d, move)
    inst = mini_node.instance(u)
    assert inst["source"] == "metadata"
    hits = critical(inst, "disk-outside-instance-dir", "disk")
    assert any(str(secret) in f["message"] for f in hits)
    status, out, _ = mini_node.run("audit")
    assert status == 2 and "metadata-drift" in out


def test_disk_the_record_omits_is_still_inspected(mini_node, tmp_path):
    u, d = persisted(mini_node)

    def drop(data):
        data["disks"] = [x for x in data["disks"] if x["name"] != "disk.local"]

    edit_record(d, drop)
    hostile_raw(d / "disk.local", str(host_file(tmp_path)))
    inst = mini_node.instance(u)
    assert inst["source"] == "metadata"
    assert [x["name"] for x in inst["disks"]] == ["disk", "disk.local"]
    critical(inst, "raw-disk-has-image-header", "disk.local")
    status, out, _ = mini_node.run("audit")
    assert status == 2 and "metadata-drift" in out


def with_backing_store(node, source_xml: str) -> None:
    """Give the last domain's first disk a <backingStore> (libvirt -blockdev)."""
    dom = node.domains[-1]
    store = f"<backingStore type='file'><format type='raw'/>{source_xml}</backingStore>"
    node.domains[-1] = dom.replace("<target dev='vda'", store + "<target dev='vda'", 1)


@pytest.mark.parametrize(
    "source",
    [
        "<source file='{host}'/>",
        "<source file='{base}/../../host/secret.img'/>",
        "<source file='{base}/link'/>",
        "<source file='{base}/ok'/>"
        "<backingStore type='file'><format type='raw'/><source file='{host}'/></backingStore>",
        "<source protocol='nbd' name='export'/>",
    ],
)
def test_backing_store_outside_the_cache_is_critical(mini_node, tmp_path, source):
    host = host_file(tmp_path)
    (mini_node.base / "link").symlink_to(host)
    qemu_img("create", "-q", "-f", "raw", str(mini_node.base / "ok"), str(MiB))
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    qemu_img(
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        str(mini_node.base / "ok"),
        "-F",
        "raw",
        str(d / "disk"),
    )
    mini_node.add(u, [{"fmt": "qcow2", "src": d / "disk"}])
    with_backing_store(mini_node, source.format(host=host, base=mini_node.base))
    if "protocol" in source:
        mini_node.domains[-1] = mini_node.domains[-1].replace(
            "<backingStore type='file'>", "<backingStore type='network'>"
        )
    inst = mini_node.instance(u)
    critical(inst, "backing-file-outside-cache", "disk")
    refused(mini_node, u)


def test_backing_store_inside_the_cache_is_fine(mini_node):
    base = mini_node.base / "ok"
    qemu_img("create", "-q", "-f", "raw", str(base), str(MiB))
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(d / "disk"))
    mini_node.add(u, [{"fmt": "qcow2", "src": d / "disk"}])
    with_backing_store(mini_node, f"<source file='{base}'/>")
    assert codes(mini_node.instance(u)) == set()


def test_ploop_root_hds_symlinked_to_a_host_file_is_critical(mini_node, tmp_path):
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    target = host_file(tmp_path)
    (d / "disk").mkdir()
    (d / "disk" / "root.hds").symlink_to(target)
    mini_node.add(u, [{"fmt": "ploop", "src": d / "disk"}])
    hits = critical(mini_node.instance(u), "disk-outside-instance-dir", "disk")
    assert any(str(target) in f["message"] for f in hits)
    refused(mini_node, u)
