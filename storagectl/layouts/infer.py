"""Infer an instance's storage layout once, from authoritative sources only.

Sources, in order of authority:

1. the libvirt domain XML: which disks exist, where, and in which format libvirt opens
   them (``<driver type>``) - the format is never taken from disk contents;
2. nova.conf: where instance directories and the image cache are, the VG, RBD pool,
   Ceph conf and user;
3. LVM and Ceph metadata: whether a volume exists and how large it is;
4. ``disk.info``: Nova's half-kept format cache, only cross-checked;
5. image headers, read by storagectl's own bounded inspector, only to *detect* danger
   (an image header inside a raw disk, a backing file outside the cache, an external
   data file). A backing file is inspected only when it lies inside the image cache.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from storagectl.config import NovaConfig
from storagectl.layouts import naming
from storagectl.layouts.domain import DomainDisk
from storagectl.layouts.hosts import ScannedDomain
from storagectl.layouts.inspector import InspectorError, inspect_file
from storagectl.layouts.model import (
    Backend,
    Backing,
    Code,
    DiskLayout,
    Finding,
    InstanceLayout,
    Role,
)
from storagectl.layouts.storage import StorageView

LOG = logging.getLogger(__name__)

DISK_INFO_MAX = 1 << 20
BACKING_CHECK = "qcow2-backing-file"  # disk.info is a few hundred bytes; refuse to parse megabytes
_FORMAT_BACKEND = {"qcow2": Backend.QCOW2, "raw": Backend.FLAT, "ploop": Backend.PLOOP,
                   "parallels": Backend.PLOOP}
# disk.info spellings that mean the same as the XML's driver type.
_DISK_INFO_ALIASES = {"rbd": "raw", "lvm": "raw", "flat": "raw", "parallels": "ploop"}


@dataclass
class _Ctx:
    """Everything the per-disk rules need about one instance."""

    uuid: str
    nova: NovaConfig
    storage: StorageView
    local: bool
    inst_dir: str
    inst_dir_real: str
    cache_real: str
    findings: list[Finding]

    def add(self, code: Code, disk: str | None, message: str) -> None:
        self.findings.append(Finding.of(code, self.uuid, disk, message))


def infer_instance(dom: ScannedDomain, host: str, nova: NovaConfig, storage: StorageView,
                   *, local: bool = True) -> InstanceLayout:
    info = dom.info
    inst_dir = os.path.normpath(nova.instance_dir(info.uuid))
    ctx = _Ctx(
        uuid=info.uuid,
        nova=nova,
        storage=storage,
        local=local,
        inst_dir=inst_dir,
        inst_dir_real=os.path.realpath(inst_dir),
        cache_real=os.path.realpath(nova.image_cache_path),
        findings=[],
    )
    layout = InstanceLayout(uuid=info.uuid, name=info.name, host=host, state=dom.state,
                            source="inferred", findings=ctx.findings)
    used: set[str] = set()
    for ddisk in info.disks:
        disk = _classify(ddisk, ctx)
        if disk is None:
            continue
        disk.name = _unique(disk.name, used)
        layout.disks.append(disk)
    for path, role in ((info.kernel, Role.KERNEL), (info.initrd, Role.RAMDISK)):
        if path:
            layout.disks.append(_boot_file(path, role, ctx))
    if local:
        _check_disk_info(layout, ctx)
    else:
        ctx.add(Code.NOT_INSPECTED, None,
                f"host {host} is remote: disk contents and disk.info were not inspected; "
                "run storagectl on the compute host itself for the safety checks")
    return layout


def _unique(name: str, used: set[str]) -> str:
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}#{n}"
    used.add(candidate)
    return candidate


def _classify(d: DomainDisk, ctx: _Ctx) -> DiskLayout | None:
    if d.source is None:
        if d.device in ("cdrom", "floppy"):
            return None  # an empty removable drive is not storage
        disk = DiskLayout(name=d.target or "?", role=Role.UNKNOWN, target=d.target,
                          backend=Backend.UNKNOWN, format=d.driver_type, device=d.device)
        ctx.add(Code.UNKNOWN_LAYOUT, disk.name, f"disk {d.target} has no source in the XML")
        return disk
    if d.type in ("file", "dir"):
        return _file_disk(d, ctx)
    if d.type == "block":
        return _block_disk(d, ctx)
    if d.type == "network" and d.protocol == "rbd":
        return _rbd_disk(d, ctx)
    return _volume(d, d.source)


def _volume(d: DomainDisk, source: str) -> DiskLayout:
    name = os.path.basename(source.rstrip("/")) or d.target or "volume"
    return DiskLayout(name=name, role=Role.VOLUME, target=d.target, backend=Backend.VOLUME,
                      format=d.driver_type, path=source if source.startswith("/") else None,
                      device=d.device)


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _looks_like_volume(path: str, ctx: _Ctx) -> bool:
    # Nova mounts remote-filesystem volumes (NFS, Quobyte, ...) under $state_path/mnt.
    mnt = os.path.join(ctx.nova.state_path, "mnt")
    return _inside(path, mnt) or os.path.basename(path).startswith("volume-")


def _file_disk(d: DomainDisk, ctx: _Ctx) -> DiskLayout:
    path = os.path.normpath(d.source or "")
    name = os.path.basename(path)
    in_dir = os.path.dirname(path) == ctx.inst_dir
    if not in_dir and _looks_like_volume(path, ctx):
        return _volume(d, path)
    fmt = d.driver_type
    backend = _FORMAT_BACKEND.get(fmt or "", Backend.UNKNOWN) if in_dir else Backend.UNKNOWN
    role = naming.role_of(name) if in_dir else Role.UNKNOWN
    disk = DiskLayout(name=name, role=role, target=d.target, backend=backend, format=fmt,
                      path=path, device=d.device)
    if not in_dir:
        ctx.add(Code.DISK_OUTSIDE_INSTANCE_DIR, name,
                f"disk {path} ({d.target}) is outside the instance directory {ctx.inst_dir} "
                "and the image cache")
        ctx.add(Code.UNKNOWN_LAYOUT, name,
                f"disk {path} is not named as Nova names instance storage")
        return disk
    if backend is Backend.UNKNOWN:
        ctx.add(Code.UNKNOWN_LAYOUT, name,
                f"disk {path} uses format {fmt!r}, which no storagectl backend handles")
    elif role is Role.UNKNOWN:
        ctx.add(Code.UNKNOWN_LAYOUT, name, f"file {name} is not one of Nova's disk names")
    if not ctx.local:
        return disk
    real = os.path.realpath(path)
    if real != path and not (_inside(real, ctx.inst_dir_real) or _inside(real, ctx.cache_real)):
        ctx.add(Code.DISK_OUTSIDE_INSTANCE_DIR, name,
                f"disk {path} resolves to {real}, outside the instance directory and the "
                "image cache")
    if d.type == "dir":  # ploop: a directory holding root.hds + DiskDescriptor.xml
        real = os.path.join(real, "root.hds")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        ctx.add(Code.DISK_MISSING, name, f"disk {path} ({d.target}) does not exist")
        return disk
    except OSError as exc:
        ctx.add(Code.UNKNOWN_LAYOUT, name, f"cannot stat {path}: {exc.strerror}")
        return disk
    disk.allocated_size = st.st_blocks * 512
    # Every existing file is inspected, whatever backend it maps to, so that an unsafe
    # format (QED, a VMDK with host-path extents ...) is flagged even where storagectl
    # itself would never open it.
    _check_image(disk, real, ctx, declared="parallels" if backend is Backend.PLOOP else fmt,
                 xml_backing_format=d.backing_format)
    return disk


def _check_image(disk: DiskLayout, real: str, ctx: _Ctx, *, declared: str | None,
                 xml_backing_format: str | None = None) -> None:
    """Run the header inspector on one local image and turn what it says into findings."""
    try:
        report = inspect_file(real, declared or "raw")
    except InspectorError as exc:
        ctx.add(Code.UNKNOWN_LAYOUT, disk.name, str(exc))
        return
    disk.virtual_size = report.virtual_size
    embedded = report.container_header_in_raw
    if embedded:
        hidden = report.embedded.backing_file if report.embedded else None
        extra = f" naming backing file {hidden!r}" if hidden else ""
        ctx.add(Code.RAW_DISK_HAS_IMAGE_HEADER, disk.name,
                f"{disk.path} is used as raw but begins with a {embedded} header{extra}; "
                "a host that probes it would expose that file to the guest")
    _failures_to_findings(disk.name, disk.path or real, report, ctx)
    if report.backing_file and declared == "qcow2":
        _check_backing(disk, real, report.backing_file,
                       report.backing_format or xml_backing_format, ctx)


def _failures_to_findings(name: str, path: str, report, ctx: _Ctx) -> None:  # noqa: ANN001
    for failure in report.failures:
        if failure.check == BACKING_CHECK:
            continue  # a Nova overlay has a backing file by design: _check_backing judges it
        if failure.check == "qcow2-data-file":
            ctx.add(Code.QCOW2_DATA_FILE, name,
                    f"{path} is a qcow2 with external data file {report.data_file!r}")
        elif failure.check == "format-mismatch":
            ctx.add(Code.FORMAT_MISMATCH, name,
                    f"the domain XML opens {path} as {report.declared_format}, but its header "
                    f"is not {report.declared_format} ({failure.message})")
        else:
            ctx.add(Code.UNSAFE_IMAGE_FORMAT, name,
                    f"{path} fails safety check {failure.check}: {failure.message}")


def _check_backing(disk: DiskLayout, real: str, backing: str, backing_format: str | None,
                   ctx: _Ctx) -> None:
    # The backing path is as written in the qcow2 header (host-written for Nova's
    # overlays). It is resolved lexically and never opened unless inside the cache.
    resolved = os.path.normpath(os.path.join(os.path.dirname(real), backing))
    disk.backing = Backing(path=resolved, format=backing_format)
    base_real = os.path.realpath(resolved)
    if not _inside(base_real, ctx.cache_real):
        ctx.add(Code.BACKING_FILE_OUTSIDE_CACHE, disk.name,
                f"{disk.path} has backing file {backing!r}, outside the image cache "
                f"{ctx.nova.image_cache_path}; it was not followed")
        return
    if not os.path.exists(base_real):
        ctx.add(Code.DISK_MISSING, disk.name,
                f"backing file {resolved} of {disk.path} does not exist")
        return
    base_fmt = backing_format or ("raw" if ctx.nova.force_raw_images else None)
    try:
        base = inspect_file(base_real, base_fmt or "raw")
    except InspectorError as exc:
        ctx.add(Code.UNKNOWN_LAYOUT, disk.name, str(exc))
        return
    if base.container_header_in_raw:
        how = ("recorded as raw" if backing_format
               else "with no backing format recorded, so qemu would probe it")
        ctx.add(Code.RAW_DISK_HAS_IMAGE_HEADER, disk.name,
                f"base {resolved} of {disk.path} is {how}, but begins with a "
                f"{base.container_header_in_raw} header")
    _failures_to_findings(disk.name, resolved, base, ctx)
    if base.backing_file:
        ctx.add(Code.NESTED_BACKING_CHAIN, disk.name,
                f"base {resolved} of {disk.path} itself has backing file {base.backing_file!r}")
        nested = os.path.realpath(os.path.join(os.path.dirname(base_real), base.backing_file))
        if not _inside(nested, ctx.cache_real):
            ctx.add(Code.BACKING_FILE_OUTSIDE_CACHE, disk.name,
                    f"base {resolved} has backing file {base.backing_file!r} outside the "
                    "image cache; it was not followed")


def _block_disk(d: DomainDisk, ctx: _Ctx) -> DiskLayout:
    src = os.path.normpath(d.source or "")
    parts = src.split("/")
    # /dev/<vg>/<lv>: Nova's LVM backend. /dev/mapper, /dev/disk/by-* are volumes.
    if len(parts) == 4 and parts[1] == "dev" and parts[2] not in ("mapper", "disk"):
        vg, lv = parts[2], parts[3]
        parsed = naming.parse_lv_name(lv)
        if parsed and parsed[0] == ctx.uuid:
            return _lvm_disk(d, ctx, vg, lv, parsed[1])
    return _volume(d, src)


def _lvm_disk(d: DomainDisk, ctx: _Ctx, vg: str, lv: str, name: str) -> DiskLayout:
    path = f"/dev/{vg}/{lv}"
    disk = DiskLayout(name=name, role=naming.role_of(name), target=d.target,
                      backend=Backend.LVM, format=d.driver_type, path=path,
                      volume_group=vg, volume=lv, device=d.device)
    if d.driver_type != "raw":
        ctx.add(Code.UNKNOWN_LAYOUT, name,
                f"LV {vg}/{lv} is opened as {d.driver_type!r}; Nova's LVM backend uses raw")
    if not ctx.local:
        return disk
    listing = ctx.storage.lvm(vg)
    if listing.error and not listing.missing:
        ctx.add(Code.NOT_INSPECTED, name, f"cannot check LV {vg}/{lv}: {listing.error}")
        return disk
    vol = listing.volumes.get(lv)
    if vol is None:
        ctx.add(Code.DISK_MISSING, name, f"LV {vg}/{lv} ({d.target}) does not exist")
        return disk
    disk.virtual_size = disk.allocated_size = vol.size
    # Reading the LV's first bytes needs it active; an inactive LV is checked later.
    if os.path.exists(path) and d.driver_type == "raw":
        _check_image(disk, path, ctx, declared="raw")
        disk.virtual_size = vol.size
    return disk


def _rbd_disk(d: DomainDisk, ctx: _Ctx) -> DiskLayout:
    pool, _, image = (d.source or "").partition("/")
    parsed = naming.parse_rbd_image_name(image)
    if not parsed or parsed[0] != ctx.uuid:
        return _volume(d, d.source or "")
    name = parsed[1]
    conf = ctx.nova.images_rbd_ceph_conf
    user = ctx.nova.rbd_user or d.auth_username
    disk = DiskLayout(name=name, role=naming.role_of(name), target=d.target,
                      backend=Backend.RBD, format=d.driver_type, pool=pool, image=image,
                      device=d.device, ceph_conf=conf, rbd_user=user)
    if not ctx.local:
        return disk
    listing = ctx.storage.rbd(pool, conf, user)
    if listing.error:
        ctx.add(Code.NOT_INSPECTED, name, f"cannot check RBD image {pool}/{image}: "
                f"{listing.error}")
        return disk
    vol = listing.volumes.get(image)
    if vol is None:
        ctx.add(Code.DISK_MISSING, name, f"RBD image {pool}/{image} ({d.target}) does not exist")
        return disk
    disk.virtual_size = vol.size
    return disk


def _boot_file(path: str, role: Role, ctx: _Ctx) -> DiskLayout:
    path = os.path.normpath(path)
    disk = DiskLayout(name=os.path.basename(path), role=role, target=None,
                      backend=Backend.FLAT, format="raw", path=path, device="kernel")
    if os.path.dirname(path) != ctx.inst_dir:
        disk.backend = Backend.UNKNOWN
        ctx.add(Code.DISK_OUTSIDE_INSTANCE_DIR, disk.name,
                f"{role.value} {path} is outside the instance directory {ctx.inst_dir}")
    elif ctx.local:
        try:
            st = os.stat(path)
            disk.virtual_size = st.st_size
            disk.allocated_size = st.st_blocks * 512
        except FileNotFoundError:
            ctx.add(Code.DISK_MISSING, disk.name, f"{role.value} {path} does not exist")
    return disk


def read_disk_info(inst_dir: str) -> tuple[dict[str, str] | None, str | None]:
    """Nova's ``disk.info``: ``{path: format}``. Returns (mapping or None, error or None)."""
    path = os.path.join(inst_dir, "disk.info")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(DISK_INFO_MAX + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}"
    if len(raw) > DISK_INFO_MAX:
        return None, f"{path} is larger than {DISK_INFO_MAX} bytes"
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"{path} is not valid JSON: {exc}"
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        return None, f"{path} is not a JSON object of path -> format strings"
    return data, None


def _check_disk_info(layout: InstanceLayout, ctx: _Ctx) -> None:
    info, error = read_disk_info(ctx.inst_dir)
    if error:
        ctx.add(Code.DISK_INFO_INVALID, None, error)
    if not info:
        return
    for disk in layout.disks:
        keys = [k for k in (disk.path, f"rbd:{disk.pool}/{disk.image}" if disk.pool else None,
                            f"{disk.pool}/{disk.image}" if disk.pool else None) if k]
        recorded = next((info[k] for k in keys if k in info), None)
        if recorded is None or disk.format is None or disk.backend is Backend.VOLUME:
            continue
        if _DISK_INFO_ALIASES.get(recorded, recorded) != disk.format:
            ctx.add(Code.FORMAT_MISMATCH, disk.name,
                    f"the domain XML opens {disk.location} as {disk.format}, but disk.info "
                    f"says {recorded}")
