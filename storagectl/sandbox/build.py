"""Making the sandbox's files, volumes and domains the way Nova made them.

Every disk comes from the real tools, through :class:`storagectl.host.process.Runner`:

- image cache entry (raw, sparse): ``qemu-img create -f raw _base/<sha1> 117440512``,
  then a partition table and a stamped data area written in place;
- ephemeral template: ``qemu-img create -f raw _base/ephemeral_1_40d1d2c 1073741824``
  + ``mkfs -t ext4 -F -E lazy_itable_init=1,lazy_journal_init=1 <path>``; swap
  template: ``qemu-img create`` + ``mkswap <path>``;
- qcow2 disk: ``qemu-img create -f qcow2 -o backing_file=<base>,backing_fmt=raw
  <path> 1073741824`` (Nova's ``create_cow_image`` + ``extend`` in one call);
- flat disk: ``cp <base> <path>`` + ``qemu-img resize -f raw <path> <size>``;

  each distinct disk (same format, source and size) is made once that way, as a
  prototype, and every instance gets a sparse, byte-identical copy of it: new disks
  of one shape do not differ, and 3,000 qemu-img runs would cost half a minute;
- LVM: ``LVM.create(vg, "<uuid>_disk", size)``; RBD: ``RBD.create(image, size)`` then
  ``qemu-img convert -n --target-is-zero -f raw -O raw <base> rbd:<pool>/<image>:...``;
- a "guest" write into each file root: for qcow2, batches of
  ``qemu-io -c "open -t unsafe -o driver=qcow2 <path>" -c "write -P 77 5242880 65536"``.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storagectl.host.libvirt_port import LibvirtDomains, LibvirtPort, SwitchError
from storagectl.host.process import Runner
from storagectl.sandbox.iso import build_iso
from storagectl.sandbox.model import SandboxDisk, SandboxError, SandboxInstance
from storagectl.sandbox.plan import (
    EPHEMERAL_FS,
    NOVA_VERSION,
    MiB,
    Plan,
    PlannedImage,
    PlannedInstance,
    Template,
)

MARKER_LENGTH = 64 * 1024
_BLOCK = 4096
_PARTITION_START = MiB  # first partition at LBA 2048, as cloud images have it


@dataclass
class Backends:
    """The storage backends the plan needs (None when it has no such instances)."""

    lvm: Any = None  # storagectl.backends.lvm.LVM
    rbd: Any = None  # storagectl.backends.rbd.RBD


def nova_conf_text(plan: Plan) -> str:
    """The compute node's nova.conf: a host that was always ``images_type=default``."""
    spec = plan.spec
    lines = [
        "[DEFAULT]",
        "compute_driver = libvirt.LibvirtDriver",
        f"state_path = {plan.root}",
        f"instances_path = {plan.instances_path}",
        "use_cow_images = True",
        "force_raw_images = True",
        f"default_ephemeral_format = {EPHEMERAL_FS}",
        "config_drive_format = iso9660",
        "",
        "[libvirt]",
        f"virt_type = {spec.domain_type}",
        "images_type = default",
    ]
    if spec.volume_group:
        lines.append(f"images_volume_group = {spec.volume_group}")
        lines.append("sparse_logical_volumes = False")
    if spec.rbd_pool:
        lines.append(f"images_rbd_pool = {spec.rbd_pool}")
        lines.append(f"images_rbd_ceph_conf = {spec.ceph_conf}")
        if spec.rbd_user:
            lines.append(f"rbd_user = {spec.rbd_user}")
        lines.append(f"rbd_secret_uuid = {plan.rbd_secret_uuid}")
        lines.append("disk_cachemodes = network=writeback")
    lines += ["", "[image_cache]", "subdirectory_name = _base", ""]
    return "\n".join(lines)


def base_content(image: PlannedImage) -> list[tuple[int, bytes]]:
    """(offset, data) pieces of an image: an MBR, a stamped data area, a tail block.

    Every 4 KiB block of the data area names the image and its own block number, so a
    copy that drops, shifts or zeroes data is caught by reading any block back::

        storagectl-sandbox image 5f0c...e1 block 00000001
    """
    size = image.virtual_size
    sectors = size // 512
    start_lba = _PARTITION_START // 512
    boot = f"storagectl-sandbox {image.name} {image.image_id}\n".encode("ascii")[:440]
    part = struct.pack(
        "<B3sB3sII", 0x80, b"\x00\x02\x00", 0x83, b"\xfe\xff\xff", start_lba, sectors - start_lba
    )
    disk_id = int(image.base_name[:8], 16)
    mbr = boot.ljust(440, b"\x00") + struct.pack("<IH", disk_id, 0) + part
    mbr = mbr.ljust(510, b"\x00") + b"\x55\xaa"
    data_len = min(2 * MiB, (size - _PARTITION_START) // 4) // _BLOCK * _BLOCK
    data = bytearray()
    for block in range(data_len // _BLOCK):
        line = f"storagectl-sandbox image {image.image_id} block {block:08d}\n".encode()
        data += (line * (_BLOCK // len(line) + 1))[:_BLOCK]
    tail = f"storagectl-sandbox image {image.image_id} last block\n".encode().ljust(_BLOCK, b"#")
    return [(0, mbr), (_PARTITION_START, bytes(data)), (size - _BLOCK, tail)]


def make_base(image: PlannedImage, path: Path, runner: Runner) -> None:
    runner.run("qemu-img", "create", "-q", "-f", "raw", str(path), str(image.virtual_size))
    _write_pieces(path, base_content(image))


def make_template(tmpl: Template, path: Path, runner: Runner) -> None:
    # nova: libvirt_utils.create_image('raw', target, size) then mkfs/mkswap on it.
    runner.run("qemu-img", "create", "-q", "-f", "raw", str(path), str(tmpl.virtual_size))
    if tmpl.role == "ephemeral":
        # Nova runs "mkfs -t ext4 -F <path>". The lazy_* options stop mke2fs from
        # zero-filling the journal and inode tables of what is a brand-new sparse file
        # (it reads as zeros already): same bytes, but 0.6 MiB allocated instead of 33
        # per GiB, and flat copies of the template stay sparse too.
        runner.run(
            "mkfs",
            "-t",
            EPHEMERAL_FS,
            "-F",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            str(path),
        )
    else:
        runner.run("mkswap", str(path))


def config_drive(plan: Plan, inst: PlannedInstance) -> bytes:
    """The ISO 9660 config drive Nova would give ``inst`` (openstack/latest/*.json)."""
    rec = inst.record
    tap = "tap" + inst.port_uuid[:11]
    meta = {
        "uuid": rec.uuid,
        "meta": {},
        "hostname": rec.display_name,
        "name": rec.display_name,
        "launch_index": 0,
        "availability_zone": "nova",
        "project_id": inst.project[0],
        "devices": [],
        "public_keys": {},
        "keys": [],
    }
    network = {
        "links": [
            {
                "id": tap,
                "vif_id": inst.port_uuid,
                "type": "ovs",
                "mtu": 1450,
                "ethernet_mac_address": inst.mac,
            }
        ],
        "networks": [
            {"id": "network0", "type": "ipv4_dhcp", "link": tap, "network_id": inst.project[0]}
        ],
        "services": [],
    }
    files = {
        "openstack/latest/meta_data.json": json.dumps(meta).encode(),
        "openstack/latest/network_data.json": json.dumps(network).encode(),
        "openstack/latest/vendor_data.json": b"{}",
    }
    return build_iso(
        files, label="config-2", publisher=f"OpenStack Compute {NOVA_VERSION}", stamp=inst.created
    )


ShapeKey = tuple[str, str, int]  # (format, source file, virtual size)


def disk_shape(plan: Plan, inst: PlannedInstance, disk: SandboxDisk) -> ShapeKey:
    """What a file disk is made from: qcow2 on a backing file, or a raw copy of a source.

    Disks of one shape are byte-identical when new (a qcow2 header names its backing
    file, never its own path), so each shape is made once by the real tools and copied.
    """
    if disk.format == "qcow2":
        return ("qcow2", disk.backing_file or "", disk.virtual_size)
    if disk.name == "disk":
        return ("raw", str(plan.base_file(inst.image.base_name)), disk.virtual_size)
    # Flat ephemeral/swap disks hold the template's content (Nova ran mkfs/mkswap in
    # place, which gives the same bytes).
    return ("raw", str(plan.base_file(_template_for(plan, disk).name)), disk.virtual_size)


def make_prototype(shape: ShapeKey, path: Path, runner: Runner) -> None:
    """Make one disk of ``shape`` at ``path`` exactly as Nova would have made it."""
    fmt, source, size = shape
    if fmt == "qcow2":
        # Nova's create_cow_image + disk.extend, in one qemu-img call.
        opts = f"backing_file={source.replace(',', ',,')},backing_fmt=raw"
        runner.run("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, str(path), str(size))
        return
    # Nova's Flat backend: copy_image (cp) then disk.extend (qemu-img resize).
    runner.run("cp", source, str(path))
    runner.run("qemu-img", "resize", "-q", "-f", "raw", str(path), str(size))


def make_instance(
    plan: Plan,
    inst: PlannedInstance,
    runner: Runner,
    backends: Backends,
    prototypes: Mapping[ShapeKey, Path],
) -> SandboxInstance:
    """Create one instance's directory, disks, ``disk.info`` and ``console.log``."""
    rec = inst.record
    inst_dir = Path(rec.instance_dir)
    inst_dir.mkdir()
    base = plan.base_file(inst.image.base_name)
    disk_info: dict[str, str] = {}
    for disk in rec.disks:
        if disk.name == "disk.config":
            _make_config_drive(plan, inst, disk, runner, backends)
        elif disk.backend == "file":
            sparse_copy(prototypes[disk_shape(plan, inst, disk)], Path(disk.path or ""))
        elif disk.backend == "lvm":
            backends.lvm.create(disk.vg, disk.lv, disk.virtual_size, sparse=False)
        else:
            backends.rbd.create(disk.image, disk.virtual_size)
            if disk.name == "disk":
                _convert_into_rbd(base, disk, runner, backends)
        # Only Nova's file backends (Flat, Qcow2) record formats in disk.info; its Lvm
        # and Rbd images leave disk_info_path unset, so their disks never appear there.
        if disk.backend == "file":
            disk_info[disk.path or ""] = disk.format
    if disk_info:
        # One line of JSON, as Image.resolve_driver_format writes it.
        (inst_dir / "disk.info").write_text(json.dumps(disk_info) + "\n")
    (inst_dir / "console.log").touch()
    if plan.spec.guest_writes and rec.kind in ("qcow2", "flat"):
        rec.guest_marker = _guest_write(inst, rec.disk("disk"))
    return rec


def sparse_copy(source: Path, target: Path) -> None:
    """Copy ``source`` to a new file ``target``, keeping holes as holes.

    Walks the data extents (SEEK_DATA/SEEK_HOLE) and copies each in the kernel
    (copy_file_range): a 1 GiB disk holding 2 MiB costs 2 MiB, in well under a ms.
    """
    with open(source, "rb") as src, open(target, "xb") as dst:
        fin, fout = src.fileno(), dst.fileno()
        end = os.fstat(fin).st_size
        pos = 0
        while pos < end:
            try:
                data = os.lseek(fin, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            hole = os.lseek(fin, data, os.SEEK_HOLE)
            offset = data
            while offset < hole:
                copied = os.copy_file_range(fin, fout, hole - offset, offset, offset)
                if copied == 0:
                    break
                offset += copied
            pos = hole
        os.ftruncate(fout, end)


def _template_for(plan: Plan, disk: SandboxDisk) -> Template:
    role = "swap" if disk.name == "disk.swap" else "ephemeral"
    for tmpl in plan.templates:
        if tmpl.role == role and tmpl.virtual_size == disk.virtual_size:
            return tmpl
    raise SandboxError(root=plan.root, reason=f"no {role} template for {disk.location}")


def _make_config_drive(
    plan: Plan, inst: PlannedInstance, disk: SandboxDisk, runner: Runner, backends: Backends
) -> None:
    iso = config_drive(plan, inst)
    disk.virtual_size = len(iso)
    local = Path(inst.record.instance_dir) / "disk.config"
    _write_pieces(local, [(0, iso)], create=True)
    if disk.backend == "rbd":
        # Nova imports the drive into the pool, then deletes the local copy.
        backends.rbd.create(disk.image, disk.virtual_size)
        _convert_into_rbd(local, disk, runner, backends)
        local.unlink()


def _convert_into_rbd(source: Path, disk: SandboxDisk, runner: Runner, backends: Backends) -> None:
    # -n: the image exists already; --target-is-zero: a new RBD image reads as zeros,
    # so holes in the source need not be written (and memstore OSDs stay small).
    runner.run(
        "qemu-img",
        "convert",
        "-n",
        "--target-is-zero",
        "-f",
        "raw",
        "-O",
        "raw",
        str(source),
        backends.rbd.qemu_uri(disk.image),
    )


def _guest_write(inst: PlannedInstance, disk: SandboxDisk) -> dict[str, Any]:
    """Plan the "guest" write into a root disk; raw disks get it at once, qcow2 later.

    qcow2 markers are written by :func:`write_qcow2_markers`, many disks per qemu-io.
    """
    offset = (4 + inst.index % 8) * MiB
    pattern = 0x40 + inst.index % 64
    if disk.format == "raw":
        _write_pieces(Path(disk.path or ""), [(offset, bytes([pattern]) * MARKER_LENGTH)])
    return {"disk": disk.name, "offset": offset, "length": MARKER_LENGTH, "pattern": pattern}


def write_qcow2_markers(instances: list[SandboxInstance], runner: Runner) -> None:
    """Write each instance's guest marker into its qcow2 root with qemu-io.

    One qemu-io serves a whole batch through its own ``open``/``write``/``close``
    commands (qemu-io starts in ~10 ms; a write takes microseconds)::

        qemu-io -c "open -t unsafe -o driver=qcow2 <uuid>/disk" \
                -c "write -P 77 5242880 65536" -c close ...

    ``-t unsafe``: no flush to stable storage on close; a sandbox that loses power is
    rebuilt, not recovered. qemu-io splits its commands on blanks, so a path holding
    one gets a qemu-io of its own, with the path as a real argument.
    """
    commands: list[str] = []
    for rec in instances:
        marker = rec.guest_marker
        if marker is None:
            continue
        path = rec.disk(marker["disk"]).path or ""
        write = f"write -P {marker['pattern']} {marker['offset']} {marker['length']}"
        if any(c.isspace() for c in path):
            runner.run("qemu-io", "-t", "unsafe", "-f", "qcow2", "-c", write, path)
            continue
        commands += ["-c", f"open -t unsafe -o driver=qcow2 {path}", "-c", write, "-c", "close"]
    if commands:
        runner.run("qemu-io", *commands)


def _write_pieces(path: Path, pieces: list[tuple[int, bytes]], create: bool = False) -> None:
    flags = os.O_WRONLY | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = os.open(path, flags, 0o644)
    try:
        for offset, data in pieces:
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def define_domains(uri: str, xmls: list[str], port: LibvirtPort | None = None) -> None:
    """Define (persistent, not started) each domain XML in the libvirtd at ``uri``
    (through ``port``, by default the real one)."""
    port = port or LibvirtDomains(uri)
    try:
        for xml in xmls:
            try:
                port.define(xml)
            except SwitchError as exc:
                reason = str(exc.reason).removeprefix("libvirt refused the XML: ")
                raise SandboxError(root=uri, reason=f"defineXML: {reason}") from exc
    finally:
        port.close()
