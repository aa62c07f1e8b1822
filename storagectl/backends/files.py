"""Disks that are files in the instance directory: qcow2, flat (raw) and ploop.

Nova names them ``<instances_path>/<uuid>/<name>``. A ploop disk is a directory
(``root.hds`` + ``DiskDescriptor.xml``); qemu-img reads its ``root.hds`` as
``parallels``. Every file qemu-img reads is vetted first, its whole backing chain
named explicitly (:func:`storagectl.inspect.verify.copy_source`).
"""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from storagectl.backends.base import DiskBackend, QemuSpec, TargetSettings
from storagectl.host import fsutil
from storagectl.model import naming
from storagectl.model.layout import Backend, Code, DiskLayout, Role
from storagectl.model.location import Location, required

if TYPE_CHECKING:
    from storagectl.host.domain import DomainDisk
    from storagectl.inspect.verify import Checker

TEMP_SUFFIX = ".migrating"
RETAINED_SUFFIX = ".retained-"
#: the backend of a file disk by the format libvirt opens it with
_BY_FORMAT = {"qcow2": "qcow2", "raw": "flat", "ploop": "ploop", "parallels": "ploop"}
_FORMATS = {"qcow2": ("qcow2",), "flat": ("raw",), "ploop": ("ploop", "parallels")}
PLOOP_IMAGE = "root.hds"
#: Nova's images that take their format from disk.info, else from the file's contents
_NOVA_PROBES = ("flat",)


@dataclass(frozen=True)
class FileLocation(Location):
    backend: str  # qcow2 | flat | ploop
    format: str
    path: str

    BACKENDS: ClassVar[tuple[str, ...]] = tuple(_FORMATS)

    def describe(self) -> str:
        return self.path

    def key(self) -> str:
        return os.path.normpath(self.path)

    def disk_fields(self) -> dict[str, Any]:
        return {"path": self.path}

    @classmethod
    def _from_record(cls, data: dict[str, Any]) -> FileLocation:
        (path,) = required(data, "path")
        return cls(str(data["backend"]), str(data.get("format") or "raw"), path)

    @classmethod
    def _of_disk(cls, disk: DiskLayout) -> FileLocation:
        if not disk.path:
            raise ValueError(f"disk {disk.name} has no path")
        return cls(disk.backend.value, disk.format or "raw", disk.path)


def _is_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


class FilesBackend(DiskBackend):
    XML_TYPES = ("file", "dir")
    CREATES = ("flat", "qcow2")
    LOCATION = FileLocation
    EVIDENCE = "image-headers"
    IN_INSTANCE_DIR = True
    VETTED = True
    NOVA_CLEANS_BY_IMAGES_TYPE = False

    # -- what Nova opens ----------------------------------------------------------------

    @classmethod
    def nova_format(cls, backend: str, disk_info: str | None) -> str | None:
        """Nova's Qcow2 and Ploop images are always their own format. Its Flat image
        takes the format from disk.info and, without an entry there, *probes* the file
        (``Flat.correct_format`` -> ``qemu_img_info``): None."""
        if backend in _NOVA_PROBES:
            return disk_info or None
        return cls.formats(backend)[0]

    @classmethod
    def present(cls, loc: Location, view: Any) -> bool | None:
        assert isinstance(loc, FileLocation)
        return os.path.lexists(loc.path)

    # -- record and naming --------------------------------------------------------------

    @classmethod
    def formats(cls, backend: str) -> tuple[str, ...]:
        return _FORMATS[backend]

    @classmethod
    def has_backing(cls, backend: str) -> bool:
        return backend == "qcow2"

    @classmethod
    def record_location(cls, disk: DiskLayout) -> dict[str, Any]:
        return {"path": disk.path}

    @classmethod
    def check_record_location(cls, value: Any, field: str) -> dict[str, Any]:
        from storagectl.record import schema

        return schema.FILE_LOCATION(value, field)

    @classmethod
    def disk_fields_from_record(cls, location: dict[str, Any]) -> dict[str, Any]:
        return {"path": location.get("path")}

    @classmethod
    def record_owner_check(cls, disk: DiskLayout, uuid: str) -> tuple[bool, str, str]:
        parent, base = os.path.split(disk.path or "")
        mine = (base, os.path.basename(parent)) == (disk.name, uuid)
        return mine, "path", f".../{uuid}/{disk.name}"

    @classmethod
    def target(cls, backend: str, uuid: str, disk_name: str, where: TargetSettings) -> Location:
        path = os.path.join(where.instance_dir, disk_name)
        return FileLocation(backend, cls.new_format(backend), path)

    @classmethod
    def live_problem(cls, loc: Location) -> str | None:
        if loc.backend == "ploop":
            return "a ploop disk moves offline only (QEMU opens ploop read-only)"
        return None

    @classmethod
    def staging(cls, dest: Location, source: Location) -> tuple[Location | None, Location | None]:
        # The target takes the source's Nova name: copy beside it, swap at the switch.
        assert isinstance(dest, FileLocation)
        temp = replace(dest, path=dest.path + TEMP_SUFFIX)
        kept = None
        if isinstance(source, FileLocation):
            kept = replace(source, path=f"{source.path}{RETAINED_SUFFIX}{source.backend}")
        return temp, kept

    @classmethod
    def aside(cls, loc: Location, uuid: str, disk_name: str, n: int) -> Location:
        assert isinstance(loc, FileLocation)
        name = naming.aside_name(disk_name, loc.backend, n)
        return replace(loc, path=os.path.join(os.path.dirname(loc.path), name))

    @classmethod
    def owns_retained(cls, loc: Location, uuid: str, disk_name: str, instance_dir: str) -> bool:
        assert isinstance(loc, FileLocation)
        name = os.path.basename(loc.path)
        return os.path.dirname(loc.path) == os.path.normpath(instance_dir) and (
            name in (disk_name, f"{disk_name}{RETAINED_SUFFIX}{loc.backend}")
            or naming.is_aside_of(name, disk_name, loc.backend)
        )

    @classmethod
    def remove_command(cls, loc: Location) -> str:
        assert isinstance(loc, FileLocation)
        return f"rm -r -- {loc.path}" if _is_dir(loc.path) else f"rm -- {loc.path}"

    # -- volumes ------------------------------------------------------------------------

    def exists(self, loc: Location) -> bool:
        assert isinstance(loc, FileLocation)
        return os.path.lexists(loc.path)

    def create(self, loc: Location, size: int, *, sparse: bool = False) -> None:
        """``qemu-img create -f raw|qcow2 PATH SIZE`` (a standalone qcow2, no backing)."""
        assert isinstance(loc, FileLocation)
        self.runner.run("qemu-img", "create", "-q", "-f", loc.format, loc.path, str(size))

    def remove(self, loc: Location, *, ours: bool = False) -> None:
        assert isinstance(loc, FileLocation)
        if loc.backend == "ploop" and _is_dir(loc.path):
            # Nova's ploop disk is a directory (root.hds, DiskDescriptor.xml, ploop's lock
            # and snapshot files); Nova removes it whole too.
            shutil.rmtree(loc.path)
        else:
            os.unlink(loc.path)

    def rename(self, src: Location, dst: Location) -> None:
        """``rename(2)``, then the directory is fsynced."""
        assert isinstance(src, FileLocation) and isinstance(dst, FileLocation)
        if os.path.lexists(src.path) and not os.path.lexists(dst.path):
            os.rename(src.path, dst.path)
            fsutil.fsync_dir(os.path.dirname(dst.path) or "/")

    def free_bytes(self, loc: Location) -> int | None:
        st = os.statvfs(self._dir(loc))
        return st.f_bavail * st.f_frsize

    @classmethod
    def space_name(cls, loc: Location) -> str:
        return f"file system of {cls._dir(loc)}"

    @staticmethod
    def _dir(loc: Location) -> str:
        assert isinstance(loc, FileLocation)
        return os.path.dirname(loc.path) or "/"

    # -- qemu and libvirt ---------------------------------------------------------------

    def qemu_spec(self, loc: Location, *, size: int | None = None) -> QemuSpec:
        """>>> FilesBackend(None).qemu_spec(FileLocation("flat", "raw", "/i/u/disk")).image_opts
        'driver=raw,file.driver=file,file.filename=/i/u/disk'
        """
        assert isinstance(loc, FileLocation)
        # libvirt and the record say "ploop"; qemu-img calls the format "parallels".
        fmt = "parallels" if loc.format == "ploop" else loc.format
        path = loc.path
        if loc.backend == "ploop" and os.path.isdir(path):
            # the image is the directory's root.hds (DiskDescriptor.xml is ploop's own)
            path = os.path.join(path, PLOOP_IMAGE)
        return QemuSpec(fmt, path, f"driver={fmt},file.driver=file,file.filename={opt(path)}")

    def read_name(self, loc: Location) -> str:
        from storagectl.inspect.verify import copy_source

        spec = self.qemu_spec(loc)
        return copy_source(spec.filename, spec.format)

    def cache_mode(self, loc: Location) -> str:
        """``none`` unless the file system refuses O_DIRECT (tmpfs before Linux 6.6) or
        is memory (tmpfs, ramfs: since 6.6 tmpfs takes O_DIRECT, emulated at a cost of
        2-4x the copy time here, with no device to bypass and nothing to flush)."""
        assert isinstance(loc, FileLocation)
        if fsutil.memory_backed(loc.path) or not fsutil.direct_io_supported(loc.path):
            return "writeback"
        return "none"

    def make_durable(self, loc: Location) -> None:
        assert isinstance(loc, FileLocation)
        fsutil.fsync_path(loc.path)
        fsutil.fsync_dir(os.path.dirname(os.path.abspath(loc.path)))

    def disk_xml(
        self, loc: Location, context: Any
    ) -> tuple[str, ET.Element, tuple[str, str] | None]:
        """``<disk type='file'><source file='/var/lib/nova/instances/U/disk'/>``"""
        assert isinstance(loc, FileLocation)
        return "file", ET.Element("source", {"file": loc.path}), None

    # -- inspection ---------------------------------------------------------------------

    @classmethod
    def classify(cls, d: DomainDisk, chk: Checker) -> DiskLayout | None:
        from storagectl.inspect.verify import inside

        path = os.path.normpath(d.source or "")
        name = os.path.basename(path)
        in_dir = os.path.dirname(path) == chk.inst_dir
        if not in_dir:
            # Nova mounts remote-filesystem volumes (NFS, Quobyte ...) under $state_path/mnt.
            mnt = os.path.join(chk.nova.state_path, "mnt")
            if inside(path, mnt) or name.startswith("volume-"):
                return None
        fmt = d.driver_type
        backend = Backend(_BY_FORMAT.get(fmt or "", "unknown")) if in_dir else Backend.UNKNOWN
        role = naming.role_of(name) if in_dir else Role.UNKNOWN
        disk = DiskLayout(
            name=name,
            role=role,
            target=d.target,
            backend=backend,
            format=fmt,
            path=path,
            device=d.device,
        )
        if not in_dir:
            chk.add(
                Code.DISK_OUTSIDE_INSTANCE_DIR,
                name,
                f"disk {path} ({d.target}) is outside the instance directory {chk.inst_dir} "
                "and the image cache",
            )
            chk.add(
                Code.UNKNOWN_LAYOUT,
                name,
                f"disk {path} is not named as Nova names instance storage",
            )
        elif backend is Backend.UNKNOWN:
            chk.add(
                Code.UNKNOWN_LAYOUT,
                name,
                f"disk {path} uses format {fmt!r}, which no storagectl backend handles",
            )
        elif role is Role.UNKNOWN:
            chk.add(Code.UNKNOWN_LAYOUT, name, f"file {name} is not one of Nova's disk names")
        return disk

    @classmethod
    def classify_boot(cls, path: str, role: Role, chk: Checker) -> DiskLayout:
        """The ``<kernel>`` / ``<initrd>`` of an AMI-style instance: a raw file."""
        path = os.path.normpath(path)
        inside = os.path.dirname(path) == chk.inst_dir
        disk = DiskLayout(
            name=os.path.basename(path),
            role=role,
            target=None,
            backend=Backend.FLAT if inside else Backend.UNKNOWN,
            format="raw",
            path=path,
            device="kernel",
        )
        if not inside:
            chk.add(
                Code.DISK_OUTSIDE_INSTANCE_DIR,
                disk.name,
                f"{role.value} {path} is outside the instance directory {chk.inst_dir}",
            )
        return disk

    @classmethod
    def verify(cls, disk: DiskLayout, chk: Checker, *, backing_hint: str | None) -> None:
        from storagectl.inspect import verify

        if disk.role in (Role.KERNEL, Role.RAMDISK):
            verify.verify_boot_file(disk, chk)
        elif disk.path and os.path.dirname(disk.path) == chk.inst_dir:
            ploop = disk.backend.value == "ploop"
            verify.verify_file(
                disk,
                chk,
                backing_hint,
                declared="parallels" if ploop else disk.format,
                dir_image=PLOOP_IMAGE if ploop else None,
            )
        elif disk.backend is not Backend.UNKNOWN:
            # Only a record can say this (inference never calls such a disk instance
            # storage): a hand-edited record must not point storagectl at a file elsewhere.
            chk.add(
                Code.DISK_OUTSIDE_INSTANCE_DIR,
                disk.name,
                f"{disk.backend.value} disk {disk.name} is at {disk.path}, outside its "
                f"instance directory {chk.inst_dir}",
            )
        elif disk.path:
            verify.verify_foreign(disk, chk, volume=False)


def opt(value: str) -> str:
    """QEMU's option syntax: a literal comma is written twice."""
    return value.replace(",", ",,")
