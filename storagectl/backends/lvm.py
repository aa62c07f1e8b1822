"""LVM backend: Nova's ``images_type=lvm`` disks, through the lvm2 CLI.

Every command goes through :class:`storagectl.host.process.Runner` and asks lvm2 for
a JSON report in bytes (``--reportformat json --units b --nosuffix``), so sizes
are exact integers and nothing depends on the operator's locale or
``global/units``. Report values are always strings in lvm2's ``json`` format::

    $ vgs --reportformat json --units b --nosuffix \\
        -o vg_name,vg_size,vg_free,vg_extent_size nova
      {
          "report": [
              {
                  "vg": [
                      {"vg_name":"nova", "vg_size":"1069547520",
                       "vg_free":"964689920", "vg_extent_size":"4194304"}
                  ]
              }
          ]
      }

The backend reads whatever lvm.conf the environment selects (``LVM_SYSTEM_DIR``)
and never adds ``--config``: the test environment makes LVM metadata-only
(``global/activation = 0``) from outside, and production uses the host's own
configuration unchanged.

Naming follows Nova (``nova/virt/libvirt/imagebackend.py``, class ``Lvm``):
``f"{instance.uuid}_{escape(disk_name)}"`` where ``escape`` doubles every ``_``.

Failures come out as:

* :class:`storagectl.errors.VolumeGroupNotFound` - the VG does not exist;
* :class:`LogicalVolumeNotFound` - the LV to change or remove does not exist;
* :class:`InvalidLVMName` - a VG/LV name or tag lvm2 would refuse;
* :class:`storagectl.errors.BackendError` (``backend="lvm"``) - not enough free
  space, or a report lvm2 printed that cannot be read;
* :class:`storagectl.errors.CommandFailed` - any other lvm2 failure.
"""

from __future__ import annotations

import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from storagectl import errors
from storagectl.backends.base import (
    DiskBackend,
    NovaCannotName,
    OrphanScan,
    QemuSpec,
    Refusal,
    TargetSettings,
)
from storagectl.host import fsutil
from storagectl.host.process import Runner
from storagectl.inspect.storage import Listing, Volume
from storagectl.model import attrs, naming
from storagectl.model.layout import Code, DiskLayout, Finding
from storagectl.model.location import Location, required

if TYPE_CHECKING:
    from storagectl.host.config import NovaConfig
    from storagectl.host.domain import DomainDisk
    from storagectl.inspect.storage import StorageView
    from storagectl.inspect.verify import Checker

LOG = logging.getLogger(__name__)

#: Nova's ``sparse_logical_volumes``: the space actually reserved for a sparse
#: LV (nova/virt/libvirt/storage/lvm.py ``create_volume``: ``-L 64M``).
SPARSE_PREALLOCATED = 64 * 1024 * 1024
#: Suffix of the private thin pool that backs one sparse LV (see ``create``).
POOL_SUFFIX = "_pool"

_REPORT = ("--reportformat", "json", "--units", "b", "--nosuffix")
_VG_FIELDS = "vg_name,vg_size,vg_free,vg_extent_size"
_LV_FIELDS = "vg_name,lv_name,lv_size,lv_attr,lv_path,lv_tags,segtype,pool_lv,origin,origin_size"

# lvm2 lib/misc/lvm-string.c validate_name(): these characters, no leading "-",
# not "." or "..". 127 characters at most (NAME_LEN 128 with the NUL).
_NAME_RE = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.\-]{0,126}")
# lvm2 validate_tag(): "A-Za-z0-9._-+/=!:&#", not empty.
_TAG_RE = re.compile(r"[A-Za-z0-9_+.\-/=!:&#]+")
# safe_tag() keeps these as they are; "=" separates key from value and "&"
# starts an escape, so both are escaped inside keys and values.
_TAG_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+.-/!:#")
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_HEX2_RE = re.compile(r"[0-9a-fA-F]{2}")
# lvs/vgs exit 5 with this line when the VG named on the command line is missing.
_VG_MISSING = 'Volume group "{vg}" not found'


class LogicalVolumeNotFound(errors.StorageCtlError):
    template = "logical volume %(vg_name)s/%(lv_name)s not found"


class InvalidLVMName(errors.StorageCtlError):
    template = "invalid LVM %(kind)s %(value)r: %(reason)s"
    exit_code = 2


@dataclass(frozen=True)
class LogicalVolume:
    """One LV as ``lvs`` reports it."""

    vg: str
    name: str
    size: int  # bytes the device has: virtual size of thin LVs, origin size of snapshots
    tags: tuple[str, ...]
    path: str  # /dev/VG/LV (a node exists only while the LV is active)
    attr: str  # lv_attr, e.g. "-wi-a-----"; "-wi-XX----" when activation is off
    thin: bool  # space is allocated on write (thin LV or sparse snapshot)


@dataclass(frozen=True)
class VolumeGroup:
    """One VG as ``vgs`` reports it; sizes in bytes."""

    name: str
    size: int
    free: int
    extent_size: int  # LV sizes are whole multiples of this


class LVM:
    """Logical volumes of the volume groups one host's lvm2 sees.

    Nothing runs in the constructor; the first command runs on the first call.
    """

    name = "lvm"

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    # -- reading ------------------------------------------------------------

    def volume_group(self, vg: str) -> VolumeGroup:
        """Size, free space and extent size of ``vg``.

        Runs ``vgs --reportformat json --units b --nosuffix -o
        vg_name,vg_size,vg_free,vg_extent_size VG`` (output: module docstring).
        Raises :class:`storagectl.errors.VolumeGroupNotFound`.
        """
        _check_name("volume group", vg)
        rows = self._report(vg, "vg", ("vgs", *_REPORT, "-o", _VG_FIELDS, vg))
        for row in rows:
            if row.get("vg_name") == vg:
                return VolumeGroup(
                    name=vg,
                    size=_int(row, "vg_size"),
                    free=_int(row, "vg_free"),
                    extent_size=_int(row, "vg_extent_size"),
                )
        raise errors.VolumeGroupNotFound(vg_name=vg)

    def list_volumes(self, vg: str) -> list[LogicalVolume]:
        """The LVs of ``vg`` that hold data, in lvm2's order.

        Pools (thin-pool, cache-pool, vdo-pool) are left out: they are not
        disks. Hidden LVs (``[lvol0_pmspare]`` ...) are not reported without
        ``-a``. Runs::

            $ lvs --reportformat json --units b --nosuffix -o vg_name,lv_name,lv_size,\\
                lv_attr,lv_path,lv_tags,segtype,pool_lv,origin,origin_size nova
              {"report": [{"lv": [
                  {"vg_name":"nova", "lv_name":"9d6c..._disk", "lv_size":"1073741824",
                   "lv_attr":"Vwi-a-tz--", "lv_path":"/dev/nova/9d6c..._disk",
                   "lv_tags":"storagectl.disk=disk", "segtype":"thin",
                   "pool_lv":"9d6c..._disk_pool", "origin":"", "origin_size":""},
                  {"vg_name":"nova", "lv_name":"9d6c..._disk_pool", "lv_size":"67108864",
                   "lv_attr":"twi-aotz--", "lv_path":"", "lv_tags":"",
                   "segtype":"thin-pool", "pool_lv":"", "origin":"", "origin_size":""}]}]}

        Raises :class:`storagectl.errors.VolumeGroupNotFound`.
        """
        _check_name("volume group", vg)
        return [
            _volume(vg, row)
            for row in self._lv_rows(vg)
            if not row.get("segtype", "").endswith("-pool")
        ]

    def get_volume(self, vg: str, name: str) -> LogicalVolume | None:
        """One LV of ``vg``, or None if there is no LV ``name`` in it.

        Runs ``lvs ... -S lv_name="NAME" VG`` (same fields as ``list_volumes``);
        the selection makes a missing LV an empty report with exit 0, where
        ``lvs VG/NAME`` would exit 5 just as for a missing VG.
        Raises :class:`storagectl.errors.VolumeGroupNotFound`.
        """
        _check_name("volume group", vg)
        _check_name("logical volume", name)
        for row in self._lv_rows(vg, selection=f'lv_name="{name}"'):
            if row.get("lv_name") == name:
                return _volume(vg, row)
        return None

    # -- changing -----------------------------------------------------------

    def create(
        self,
        vg: str,
        name: str,
        size_bytes: int,
        *,
        sparse: bool = False,
        tags: Iterable[str] = (),
    ) -> LogicalVolume:
        """Create LV ``name`` of at least ``size_bytes`` (rounded up to whole extents).

        Plain (Nova's default)::

            lvcreate --yes -L 1073741824b -n NAME [--addtag TAG ...] VG

        ``sparse`` is Nova's ``sparse_logical_volumes``. Nova runs
        ``lvcreate -L 64M --virtualsize SIZE -n NAME VG``, whose result depends on
        the host's ``global/sparse_segtype_default``: a thin LV in a new 64 MiB
        thin pool auto-named ``lvolN`` (lvm2's default, "thin"), or a snapshot of
        a virtual zero device (legacy "snapshot"). Either way Nova never removes
        the pool. We make the same layout explicitly, with the pool named after
        the LV so that ``remove`` (and Nova's own cleanup, which removes every LV
        whose name starts with the instance UUID) takes it away too::

            lvcreate --yes --type thin-pool -L 67108864b --zero y -n NAME_pool VG
            lvcreate --yes --type thin --virtualsize 1073741824b \\
                --thinpool NAME_pool -n NAME [--addtag TAG ...] VG

        Two commands because lvcreate making pool and thin LV at once puts the
        ``--addtag`` tags on the pool, not on the LV (seen with lvm2 2.03.16);
        this way the LV never exists without its tags. If the second command
        fails, the empty pool is removed again. ``--zero y`` whatever the host's
        ``allocation/thin_pool_zero``: a block the thin LV provisions then reads as
        zeros where it was not written, which is what lets migrate's copy skip zeros
        (``qemu-img convert --target-is-zero``) into it.

        As with Nova, writes beyond the pool's 64 MiB fail unless the host's
        dmeventd extends pools (``activation/thin_pool_autoextend_threshold``).
        Raises :class:`storagectl.errors.VolumeGroupNotFound`, and
        :class:`storagectl.errors.BackendError` when the VG lacks the space.
        """
        _check_name("logical volume", name)
        tag_list = _checked_tags(tags)
        if size_bytes <= 0:
            raise InvalidLVMName(kind="size", value=size_bytes, reason="must be positive")
        group = self.volume_group(vg)
        size = -(-size_bytes // group.extent_size) * group.extent_size
        # Like Nova's check_size(): only the space really taken must be free.
        needed = SPARSE_PREALLOCATED if sparse else size
        if needed > group.free:
            raise errors.BackendError(
                backend=self.name,
                reason=(
                    f"volume group {vg} has {group.free} bytes free, {name} needs {needed} bytes"
                ),
            )
        if sparse:
            pool = name + POOL_SUFFIX
            _check_name("logical volume", pool)
            self._runner.run(
                "lvcreate", "--yes", "--type", "thin-pool",
                "-L", f"{SPARSE_PREALLOCATED}b", "--zero", "y", "-n", pool, vg,
            )  # fmt: skip
            argv = ["lvcreate", "--yes", "--type", "thin", "--virtualsize", f"{size}b"]
            argv += ["--thinpool", pool, "-n", name]
        else:
            argv = ["lvcreate", "--yes", "-L", f"{size}b", "-n", name]
        for tag in tag_list:
            argv += ["--addtag", tag]
        try:
            self._runner.run(*argv, vg)
        except errors.StorageCtlError:
            if sparse:
                self._remove_quietly(vg, name + POOL_SUFFIX)
            raise
        created = self.get_volume(vg, name)
        if created is None:
            raise errors.BackendError(
                backend=self.name, reason=f"lvcreate reported success but {vg}/{name} is missing"
            )
        return created

    def remove(self, vg: str, name: str) -> None:
        """Remove LV ``name``, and the private thin pool ``create`` made for it.

        Runs ``lvs`` (to find the pool), then ``lvremove --yes VG/NAME`` - or
        ``lvremove --yes VG/NAME VG/NAME_pool`` when NAME is the only thin LV in
        ``NAME_pool``. An LV that is open (a running guest) is not removed:
        lvremove refuses with "Logical volume VG/NAME in use".
        Raises :class:`LogicalVolumeNotFound`, VolumeGroupNotFound.
        """
        _check_name("logical volume", name)
        rows = self._lv_rows(vg)
        target = next((r for r in rows if r.get("lv_name") == name), None)
        if target is None:
            raise LogicalVolumeNotFound(vg_name=vg, lv_name=name)
        argv = ["lvremove", "--yes", f"{vg}/{name}"]
        pool = target.get("pool_lv", "")
        if pool == name + POOL_SUFFIX:
            users = [r.get("lv_name") for r in rows if r.get("pool_lv") == pool]
            if users == [name]:
                argv.append(f"{vg}/{pool}")
        self._runner.run(*argv)

    def add_tags(self, vg: str, name: str, tags: Iterable[str]) -> None:
        """Add tags (already-present ones are kept; lvm2 exits 0).

        Runs ``lvchange --addtag TAG [--addtag TAG ...] VG/NAME``.
        Raises :class:`LogicalVolumeNotFound`, VolumeGroupNotFound, InvalidLVMName.
        """
        self._change_tags(vg, name, "--addtag", tags)

    def remove_tags(self, vg: str, name: str, tags: Iterable[str]) -> None:
        """Remove tags (absent ones are ignored; lvm2 exits 0).

        Runs ``lvchange --deltag TAG [--deltag TAG ...] VG/NAME``.
        Raises :class:`LogicalVolumeNotFound`, VolumeGroupNotFound, InvalidLVMName.
        """
        self._change_tags(vg, name, "--deltag", tags)

    # -- names --------------------------------------------------------------

    @staticmethod
    def volume_name(instance_uuid: str, disk_name: str) -> str:
        """Nova's LV name for one disk of one instance.

        >>> LVM.volume_name("9d6c3e7a-0f1b-4c2d-8e3f-4a5b6c7d8e9f", "disk_eph0")
        '9d6c3e7a-0f1b-4c2d-8e3f-4a5b6c7d8e9f_disk__eph0'
        """
        return naming.lv_name(instance_uuid, disk_name)

    @staticmethod
    def parse_volume_name(lv_name: str) -> tuple[str, str] | None:
        """``(instance_uuid, disk_name)`` of a Nova LV name, or None if it is not one.

        A lone ``_`` cannot come out of Nova's escaping, so names such as
        ``UUID_disk_pool`` (our private thin pools) are not disks.

        >>> LVM.parse_volume_name("9d6c3e7a-0f1b-4c2d-8e3f-4a5b6c7d8e9f_disk__eph0")
        ('9d6c3e7a-0f1b-4c2d-8e3f-4a5b6c7d8e9f', 'disk_eph0')
        >>> LVM.parse_volume_name("lvol0") is None
        True
        """
        return naming.parse_lv_name(lv_name)

    # -- internals ----------------------------------------------------------

    def _lv_rows(self, vg: str, *, selection: str | None = None) -> list[dict[str, Any]]:
        argv = ["lvs", *_REPORT, "-o", _LV_FIELDS]
        if selection is not None:
            argv += ["-S", selection]
        return self._report(vg, "lv", (*argv, vg))

    def _remove_quietly(self, vg: str, name: str) -> None:
        # Cleanup after a failure: the original error is what the caller must see.
        try:
            self._runner.run("lvremove", "--yes", f"{vg}/{name}")
        except errors.StorageCtlError as exc:
            LOG.warning("could not remove %s/%s after a failed create: %s", vg, name, exc)

    def _change_tags(self, vg: str, name: str, flag: str, tags: Iterable[str]) -> None:
        _check_name("volume group", vg)
        _check_name("logical volume", name)
        tag_list = _checked_tags(tags)
        if not tag_list:
            return
        argv = ["lvchange"]
        for tag in tag_list:
            argv += [flag, tag]
        try:
            self._runner.run(*argv, f"{vg}/{name}")
        except errors.CommandFailed as exc:
            stderr = exc.fields.get("full_stderr", "")
            if _vg_missing(vg, stderr):
                raise errors.VolumeGroupNotFound(vg_name=vg) from exc
            if f'Failed to find logical volume "{vg}/{name}"' in stderr:
                raise LogicalVolumeNotFound(vg_name=vg, lv_name=name) from exc
            raise

    def _report(self, vg: str, key: str, argv: Sequence[str]) -> list[dict[str, Any]]:
        """Run an lvs/vgs report naming ``vg``; its rows, or VolumeGroupNotFound."""
        try:
            result = self._runner.run(*argv)
        except errors.CommandFailed as exc:
            if _vg_missing(vg, exc.fields.get("full_stderr", "")):
                raise errors.VolumeGroupNotFound(vg_name=vg) from exc
            raise
        return _rows(result.stdout, key, argv[0])


def safe_tag(key: str, value: str) -> str:
    """A ``key=value`` LVM tag that lvm2 accepts for any key and value.

    Characters outside lvm2's tag set, and ``=``/``&`` themselves, become
    ``&`` plus two hex digits per UTF-8 byte, so :func:`parse_tag` gets both back.

    >>> safe_tag("storagectl.record", "/var/lib/nova/instances/u 1/disk")
    'storagectl.record=/var/lib/nova/instances/u&201/disk'
    """
    if not key:
        raise InvalidLVMName(kind="tag key", value=key, reason="must not be empty")
    return f"{_escape_tag(key)}={_escape_tag(value)}"


def parse_tag(tag: str) -> tuple[str, str] | None:
    """The ``(key, value)`` of a :func:`safe_tag` tag, or None for other tags.

    >>> parse_tag("storagectl.record=/var/lib/nova/instances/u&201/disk")
    ('storagectl.record', '/var/lib/nova/instances/u 1/disk')
    """
    key, sep, value = tag.partition("=")
    if not sep or not key:
        return None
    try:
        return _unescape_tag(key), _unescape_tag(value)
    except ValueError:
        return None


def _escape_tag(text: str) -> str:
    return "".join(
        ch if ch in _TAG_PLAIN else "".join(f"&{b:02x}" for b in ch.encode("utf-8")) for ch in text
    )


def _unescape_tag(text: str) -> str:
    if "=" in text:
        raise ValueError("unescaped '=' in a tag part")
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "&":
            digits = text[i + 1 : i + 3]
            if not _HEX2_RE.fullmatch(digits):
                raise ValueError(f"bad escape &{digits} in a tag")
            out.append(int(digits, 16))
            i += 3
        else:
            out += text[i].encode("ascii")
            i += 1
    return out.decode("utf-8")


def _checked_tags(tags: Iterable[str]) -> list[str]:
    if isinstance(tags, str):  # a lone string would be split into characters
        tags = [tags]
    tag_list = list(tags)
    for tag in tag_list:
        if not _TAG_RE.fullmatch(tag):
            raise InvalidLVMName(
                kind="tag", value=tag, reason="allowed: A-Z a-z 0-9 _ + . - / = ! : & # (safe_tag)"
            )
    return tag_list


def _check_name(kind: str, name: str) -> None:
    # Names end up in lvm2 arguments and -S selections: refuse what lvm2 would.
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise InvalidLVMName(
            kind=kind, value=name, reason="allowed: A-Z a-z 0-9 + _ . - (not first), 1-127 chars"
        )


def _vg_missing(vg: str, stderr: str) -> bool:
    return _VG_MISSING.format(vg=vg) in stderr


def _rows(stdout: Any, key: str, command: str) -> list[dict[str, Any]]:
    try:
        report = json.loads(stdout)
        rows: list[dict[str, Any]] = []
        for section in report["report"]:
            rows.extend(section.get(key, []))
    except (TypeError, ValueError, KeyError) as exc:
        raise errors.BackendError(
            backend="lvm", reason=f"cannot read the JSON report of {command}: {exc}"
        ) from exc
    return rows


def _int(row: dict[str, Any], field: str) -> int:
    try:
        return int(row[field])
    except (KeyError, TypeError, ValueError) as exc:
        raise errors.BackendError(
            backend="lvm", reason=f"report field {field} is {row.get(field)!r}, not bytes"
        ) from exc


def _volume(vg: str, row: dict[str, Any]) -> LogicalVolume:
    name = row["lv_name"]
    attr = row.get("lv_attr", "")
    segtype = row.get("segtype", "")
    tags = tuple(t for t in row.get("lv_tags", "").split(",") if t)
    snapshot = attr[:1] in ("s", "S")
    # A snapshot's lv_size is its copy-on-write store; the device is as large as
    # its origin (origin_size). Hidden origins come in brackets.
    origin = row.get("origin", "").strip("[]")
    # "V": thin LV. A snapshot of a "*_vorigin" (segtype zero): the legacy sparse
    # LV of sparse_segtype_default = "snapshot".
    thin = segtype == "thin" or attr[:1] == "V" or (snapshot and origin.endswith("_vorigin"))
    size = _int(row, "origin_size") if snapshot and row.get("origin_size") else _int(row, "lv_size")
    return LogicalVolume(
        vg=vg,
        name=name,
        size=size,
        tags=tags,
        path=row.get("lv_path") or f"/dev/{vg}/{name}",
        attr=attr,
        thin=thin,
    )


# -- the disk backend -------------------------------------------------------------------


class EncryptedDiskRefused(errors.StorageCtlError):
    template = (
        "disk %(disk)s is opened through %(device)s, the dm-crypt mapping of an encrypted "
        "ephemeral LV (%(lv)s): storagectl does not record or move encrypted disks"
    )


def dmcrypt_device(volume: str) -> str:
    """The node Nova opens an encrypted ephemeral LV through (nova ``dmcrypt.volume_name``)."""
    return f"/dev/mapper/{volume}{DMCRYPT_SUFFIX}"


DMCRYPT_SUFFIX = "-dmcrypt"


@dataclass(frozen=True)
class LVMLocation(Location):
    """``/dev/<volume_group>/<volume>``, opened raw. ``device``: another node qemu opens
    in front of the LV (e.g. Nova's dm-crypt mapping), None for the LV's own; ``path`` is
    the one qemu opens. ``replace(loc, volume=...)`` names another LV (and its node)."""

    volume_group: str
    volume: str
    format: str = "raw"
    backend: str = "lvm"
    device: str | None = None

    BACKENDS: ClassVar[tuple[str, ...]] = ("lvm",)

    @property
    def path(self) -> str:
        return self.device or self.key()

    def describe(self) -> str:
        return self.path

    def key(self) -> str:
        return f"/dev/{self.volume_group}/{self.volume}"

    def label(self) -> str:
        return f"{self.volume_group}/{self.volume}"

    def disk_fields(self) -> dict[str, Any]:
        return attrs(self, "path", "volume_group", "volume")

    def to_record(self) -> dict[str, Any]:
        return {"backend": self.backend, "format": self.format} | self.disk_fields()

    @classmethod
    def _make(cls, vg: str, lv: str, fmt: str, path: str | None) -> LVMLocation:
        standard = f"/dev/{vg}/{lv}"
        return cls(vg, lv, format=fmt, device=path if path and path != standard else None)

    @classmethod
    def _from_record(cls, data: dict[str, Any]) -> LVMLocation:
        vg, lv = required(data, "volume_group", "volume")
        path = data.get("path")
        return cls._make(vg, lv, str(data.get("format") or "raw"), str(path) if path else None)

    @classmethod
    def _of_disk(cls, disk: DiskLayout) -> LVMLocation:
        if not (disk.volume_group and disk.volume):
            raise ValueError(f"disk {disk.name} names no LV")
        return cls._make(disk.volume_group, disk.volume, disk.format or "raw", disk.path)


class LVMBackend(DiskBackend):
    """Nova's LVM disks; thin (``sparse_logical_volumes``: a private ``<lv>_pool``) or
    thick. :class:`LVM` runs the commands."""

    XML_TYPES = ("block",)
    MIRRORED = True
    LOCATION = LVMLocation
    EVIDENCE = "lvm"
    ROUNDED_SIZE = True

    def __init__(self, runner: Runner, *, ceph_timeout: int = 60) -> None:
        super().__init__(runner, ceph_timeout=ceph_timeout)
        self.lvm = LVM(runner)

    @classmethod
    def live_target_problem(cls, loc: Location, *, sparse: bool) -> str | None:
        # Measured (tests/lvm_guest/test_migrate_live_lvm.py): QEMU 7.2's mirror, started by
        # libvirt 9.0 as blockdev-mirror (sync=full: it always zeroes the target), writes
        # every zero of the disk into a thin LV - the kernel has no WRITE_ZEROES for
        # dm-thin, so QEMU's zeroing falls back to writing zero pages - and a 256 MiB disk
        # holding 4 MiB filled its 64 MiB pool: the copy failed. A thick LV gets every zero
        # written offline too (its extents held anything before).
        if sparse:
            return (
                f"a live copy into a thin LV ({loc.describe()}, sparse_logical_volumes) would "
                "write every zero of the disk and provision the whole thin pool (QEMU's mirror "
                "zeroes its target; dm-thin cannot be zeroed without allocating): shut the "
                "instance off and move it offline (the offline copy skips zeros), or move "
                "it live into a thick LV"
            )
        return None

    # -- record and naming --------------------------------------------------------------

    @classmethod
    def formats(cls, backend: str) -> tuple[str, ...]:
        return ("raw",)

    @classmethod
    def record_location(cls, disk: DiskLayout) -> dict[str, Any]:
        # The record names an LV, not the node in front of it: a disk opened through
        # Nova's dm-crypt mapping recorded as its LV would be moved as ciphertext.
        if disk.volume and disk.path == dmcrypt_device(disk.volume):
            raise EncryptedDiskRefused(
                disk=disk.name, device=disk.path, lv=f"{disk.volume_group}/{disk.volume}"
            )
        return {"volume_group": disk.volume_group, "volume": disk.volume}

    @classmethod
    def check_record_location(cls, value: Any, field: str) -> dict[str, Any]:
        from storagectl.record import schema

        name = schema.LVM_NAME
        return schema.mapping({"volume_group": name, "volume": name})(value, field)

    @classmethod
    def disk_fields_from_record(cls, location: dict[str, Any]) -> dict[str, Any]:
        vg, lv = location["volume_group"], location["volume"]
        return {"volume_group": vg, "volume": lv, "path": f"/dev/{vg}/{lv}"}

    @classmethod
    def record_owner_check(cls, disk: DiskLayout, uuid: str) -> tuple[bool, str, str]:
        mine = naming.parse_lv_name(disk.volume or "") == (uuid, disk.name)
        return mine, "volume", naming.lv_name(uuid, disk.name)

    @classmethod
    def target(cls, backend: str, uuid: str, disk_name: str, where: TargetSettings) -> Location:
        if not where.volume_group:
            raise errors.UsageError(
                reason="--to lvm needs --volume-group (nova.conf has no images_volume_group)"
            )
        return LVMLocation(where.volume_group, naming.lv_name(uuid, disk_name))

    @classmethod
    def nova_location(
        cls, backend: str, uuid: str, disk_name: str, nova: NovaConfig, like: Location | None
    ) -> Location:
        """``/dev/<images_volume_group>/<uuid>_<name>``; for an instance whose ephemeral
        storage is encrypted (``ephemeral_key_uuid``: its disks are opened through a
        dm-crypt mapping) ``/dev/mapper/<lv>-dmcrypt`` (nova ``Lvm.__init__``)."""
        vg = nova.images_volume_group
        if not vg:
            raise NovaCannotName(
                "[libvirt] images_volume_group is not set (Nova's LVM images raise "
                "'You should specify images_volume_group')"
            )
        lv = naming.lv_name(uuid, disk_name)
        encrypted = isinstance(like, LVMLocation) and like.device == dmcrypt_device(like.volume)
        return LVMLocation(vg, lv, device=dmcrypt_device(lv) if encrypted else None)

    @classmethod
    def nova_conf_for(cls, loc: Location) -> tuple[tuple[str, str, str], ...]:
        assert isinstance(loc, LVMLocation)
        return (
            ("libvirt", "images_type", loc.backend),
            ("libvirt", "images_volume_group", loc.volume_group),
        )

    @classmethod
    def present(cls, loc: Location, view: StorageView) -> bool | None:
        assert isinstance(loc, LVMLocation)
        return cls.listing(view, loc.volume_group).has(loc.volume)

    @classmethod
    def aside(cls, loc: Location, uuid: str, disk_name: str, n: int) -> Location:
        assert isinstance(loc, LVMLocation)
        return replace(loc, volume=naming.aside_name(naming.lv_name(uuid, disk_name), "lvm", n))

    @classmethod
    def owns_retained(cls, loc: Location, uuid: str, disk_name: str, instance_dir: str) -> bool:
        assert isinstance(loc, LVMLocation)
        base = naming.lv_name(uuid, disk_name)
        ok = loc.volume == base or naming.is_aside_of(loc.volume, base, "lvm")
        # the device node is the LV's own (an item's path is never believed)
        return ok and naming.parse_lv_name(loc.volume) is not None and loc.path == loc.key()

    @classmethod
    def remove_command(cls, loc: Location) -> str:
        assert isinstance(loc, LVMLocation)
        return f"lvremove {loc.volume_group}/{loc.volume}"

    # -- volumes ------------------------------------------------------------------------

    def exists(self, loc: Location) -> bool:
        assert isinstance(loc, LVMLocation)
        return self.lvm.get_volume(loc.volume_group, loc.volume) is not None

    def create(self, loc: Location, size: int, *, sparse: bool = False) -> None:
        """``lvcreate``, rounded up to whole extents (see :meth:`LVM.create`)."""
        assert isinstance(loc, LVMLocation)
        self.lvm.create(loc.volume_group, loc.volume, size, sparse=sparse)

    def remove(self, loc: Location, *, ours: bool = False) -> None:
        assert isinstance(loc, LVMLocation)
        self.lvm.remove(loc.volume_group, loc.volume)

    def rename(self, src: Location, dst: Location) -> None:
        """``lvrename VG SRC DST`` and, in a second step, its private thin pool
        ``SRC_pool`` (which ``remove`` and a new sparse ``SRC`` need). Idempotent: an LV
        renamed without its pool gets its pool renamed."""
        assert isinstance(src, LVMLocation) and isinstance(dst, LVMLocation)
        vg, old, new = src.volume_group, src.volume, dst.volume
        rows = {r.get("lv_name"): r for r in self.lvm._lv_rows(vg)}  # noqa: SLF001
        if old in rows and new not in rows:
            self.runner.run("lvrename", vg, old, new)
            rows[new] = rows.pop(old)
        pool_old, pool_new = old + POOL_SUFFIX, new + POOL_SUFFIX
        pool = (rows.get(new) or {}).get("pool_lv")
        if pool == pool_old and pool_new not in rows:
            self.runner.run("lvrename", vg, pool_old, pool_new)

    def target_is_zero(self, loc: Location) -> bool:
        """A thick LV holds whatever its extents held before. A thin LV reads
        unprovisioned blocks as zeros, and newly provisioned ones too when its pool
        zeroes them (``z``, the 8th ``lv_attr`` character; lvm2's default
        ``allocation/thin_pool_zero = 1``)::

            {"lv_name":"U_disk", "lv_attr":"Vwi-a-tz--", "segtype":"thin", ...}

        Skipping zeros is what keeps a sparse disk sparse: writing them would provision
        the whole thin pool, which can run out of space (and then writes are lost).
        """
        assert isinstance(loc, LVMLocation)
        try:
            lv = self.lvm.get_volume(loc.volume_group, loc.volume)
        except errors.StorageCtlError as exc:
            # Writing the zeros is always correct, only slower (and the verify step
            # would catch a thin pool that ran out of space).
            LOG.warning("cannot tell whether %s reads as zeros: %s", loc.describe(), exc)
            return False
        return lv is not None and lv.attr[:1] == "V" and lv.attr[7:8] == "z"

    def free_bytes(self, loc: Location) -> int | None:
        assert isinstance(loc, LVMLocation)
        return self.lvm.volume_group(loc.volume_group).free

    @classmethod
    def space_name(cls, loc: Location) -> str:
        assert isinstance(loc, LVMLocation)
        return f"volume group {loc.volume_group}"

    @classmethod
    def bytes_needed(cls, virtual_size: int, *, sparse: bool) -> int | None:
        return SPARSE_PREALLOCATED if sparse else virtual_size

    def check(self, loc: Location, *, target: bool) -> None:
        assert isinstance(loc, LVMLocation)
        if loc.device and loc.device == dmcrypt_device(loc.volume):
            raise Refusal(
                reason=f"{loc.describe()} is the dm-crypt mapping of an encrypted ephemeral "
                f"LV ({loc.label()}): storagectl does not move encrypted disks (the copy "
                "would be written in clear)"
            )
        if not target:
            return
        try:
            self.lvm.volume_group(loc.volume_group)
        except errors.VolumeGroupNotFound as exc:
            raise Refusal(reason=f"{exc} (--volume-group)") from exc

    def check_key(self, loc: Location) -> Any:
        assert isinstance(loc, LVMLocation)
        return loc.volume_group, loc.device

    # -- qemu and libvirt ---------------------------------------------------------------

    def qemu_spec(self, loc: Location, *, size: int | None = None) -> QemuSpec:
        assert isinstance(loc, LVMLocation)
        from storagectl.backends.files import opt

        path = loc.path
        sized = f"size={size}," if size is not None else ""
        return QemuSpec(
            "raw", path, f"driver=raw,{sized}file.driver=host_device,file.filename={opt(path)}"
        )

    def sized_name(self, loc: Location, size: int) -> str:
        """The LV opened raw and cut to ``size`` (its extents round it up, the tail is not
        zeroed), as a ``json:`` name qemu-img takes beside another ``json:`` name."""
        assert isinstance(loc, LVMLocation)
        spec = {
            "driver": "raw",
            "size": size,
            "file": {"driver": "host_device", "filename": loc.path},
        }
        return "json:" + json.dumps(spec, separators=(",", ":"))

    def make_durable(self, loc: Location) -> None:
        assert isinstance(loc, LVMLocation)
        fsutil.fsync_path(loc.path)

    def disk_xml(
        self, loc: Location, context: Any
    ) -> tuple[str, ET.Element, tuple[str, str] | None]:
        """``<disk type='block'><source dev='/dev/nova/U_disk'/>``"""
        assert isinstance(loc, LVMLocation)
        return "block", ET.Element("source", {"dev": loc.path}), None

    # -- the record's mirror: LVM tags ------------------------------------------------------

    def write_mirror(self, disk: DiskLayout, items: dict[str, str], prefix: str) -> None:
        vg, lv = disk.volume_group or "", disk.volume or ""
        current = self.lvm.get_volume(vg, lv)
        have = set(current.tags) if current else set()
        wanted = {safe_tag(k, v) for k, v in items.items()}
        stale = [
            t for t in have if t not in wanted and (parse_tag(t) or ("",))[0].startswith(prefix)
        ]
        if stale:
            self.lvm.remove_tags(vg, lv, stale)
        missing = sorted(wanted - have)
        if missing:
            self.lvm.add_tags(vg, lv, missing)

    def read_mirror(self, disk: DiskLayout, prefix: str) -> dict[str, str] | None:
        lv = self.lvm.get_volume(disk.volume_group or "", disk.volume or "")
        if lv is None:
            return None
        items = {}
        for tag in lv.tags:
            parsed = parse_tag(tag)
            if parsed and parsed[0].startswith(prefix):
                items[parsed[0]] = parsed[1]
        return items

    # -- inspection ---------------------------------------------------------------------

    @classmethod
    def classify(cls, d: DomainDisk, chk: Checker) -> DiskLayout | None:
        """``/dev/<vg>/<uuid>_<name>``: Nova's LVM backend. ``/dev/mapper``,
        ``/dev/disk/by-*`` and other instances' LVs are volumes."""
        src = os.path.normpath(d.source or "")
        parts = src.split("/")
        if len(parts) != 4 or parts[1] != "dev" or parts[2] == "disk":
            return None
        vg, lv = parts[2], parts[3]
        if vg == "mapper":
            # Nova's encrypted ephemeral LVs: /dev/mapper/<uuid>_<name>-dmcrypt of an LV
            # in images_volume_group (the mapping does not say which VG; Nova assumes it)
            lv = lv.removesuffix(DMCRYPT_SUFFIX)
            vg = chk.nova.images_volume_group or ""
            if lv == parts[3] or not vg or src != dmcrypt_device(lv):
                return None
        parsed = naming.parse_lv_name(lv)
        if not parsed or parsed[0] != chk.uuid:
            return None
        name = parsed[1]
        if d.driver_type != "raw":
            chk.add(
                Code.UNKNOWN_LAYOUT,
                name,
                f"LV {vg}/{lv} is opened as {d.driver_type!r}; Nova's LVM backend uses raw",
            )
        return cls.classified(d, name, LVMLocation._make(vg, lv, "raw", src))

    @classmethod
    def orphans(cls, scan: OrphanScan) -> list[Finding]:
        """LVs named as Nova names instance disks whose instance is not defined, in the
        VGs the instances use and nova.conf's ``images_volume_group`` (a VG is local to
        its host: every LV in it is this host's)."""
        out: list[Finding] = []
        vgs = {d.volume_group for i in scan.instances for d in i.disks if d.volume_group}
        if scan.nova.images_volume_group:
            vgs.add(scan.nova.images_volume_group)
        for vg in sorted(v for v in vgs if v):
            listing = cls.listing(scan.view, vg)
            if listing.error and not listing.missing:
                scan.errors.append(f"cannot list VG {vg}: {listing.error}")
                continue
            for lv in sorted(listing.volumes):
                parsed = naming.parse_lv_name(lv)
                if parsed and parsed[0] not in scan.defined and lv not in scan.kept:
                    message = f"LV {vg}/{lv} belongs to no defined domain"
                    out.append(Finding.of(Code.ORPHAN_VOLUME, parsed[0], parsed[1], message))
        return out

    @classmethod
    def listing(cls, view: StorageView, vg: str) -> Listing:
        """The LVs of ``vg`` (one ``lvs`` per run, see :class:`StorageView`)."""

        def make() -> Listing:
            try:
                lvs = LVM(view.runner).list_volumes(vg)
            except errors.VolumeGroupNotFound:
                return Listing(missing=True, error=f"volume group {vg} not found")
            except errors.StorageCtlError as exc:
                LOG.debug("cannot list VG %s", vg, exc_info=True)
                return Listing(error=str(exc))
            return Listing({lv.name: Volume(lv.size, tuple(lv.tags), lv.path) for lv in lvs})

        return view.listing(("lvm", vg), make)

    @classmethod
    def verify(cls, disk: DiskLayout, chk: Checker, *, backing_hint: str | None) -> None:
        from storagectl.inspect.verify import check_image

        vg, lv = disk.volume_group or "", disk.volume or ""
        listing = cls.listing(chk.storage, vg)
        if listing.error and not listing.missing:
            chk.add(Code.NOT_INSPECTED, disk.name, f"cannot check LV {vg}/{lv}: {listing.error}")
            return
        vol = listing.volumes.get(lv)
        if vol is None:
            chk.add(Code.DISK_MISSING, disk.name, f"LV {vg}/{lv} ({disk.target}) does not exist")
            return
        chk.observe(disk, virtual_size=vol.size, allocated_size=vol.size)
        path = disk.path or f"/dev/{vg}/{lv}"
        if not os.path.exists(path):
            # Only an active LV has a device node to read the first bytes from.
            chk.add(
                Code.NOT_INSPECTED,
                disk.name,
                f"LV {vg}/{lv} is not active (no {path}): its contents were not inspected",
            )
        elif disk.format == "raw":
            # /dev/VG/LV -> dm-N
            check_image(disk, os.path.realpath(path), chk, declared="raw")
            chk.observe(disk, virtual_size=vol.size)
