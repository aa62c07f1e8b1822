"""The record's in-band mirror: LVM tags and RBD image-meta on the volumes themselves.

The mirror lets audit cross-check a record against the storage, find which instance and
disk an orphaned volume belonged to, and rebuild a lost record. Each block volume
carries::

    storagectl.instance=<uuid>  storagectl.disk=<name>  storagectl.role=<role>
    storagectl.format=<format>  storagectl.schema=1

as LVM tags (escaped with :func:`storagectl.backends.lvm.safe_tag`) or RBD image-meta
keys. Writing is idempotent: stale ``storagectl.*`` tags are replaced, others untouched.
"""

from __future__ import annotations

from storagectl.backends.lvm import LVM, parse_tag, safe_tag
from storagectl.backends.rbd import RBD
from storagectl.layouts.model import Backend, DiskLayout
from storagectl.layouts.record import SCHEMA_VERSION, Record
from storagectl.process import Runner

PREFIX = "storagectl."


def mirror_items(uuid: str, disk: DiskLayout) -> dict[str, str]:
    return {
        f"{PREFIX}instance": uuid,
        f"{PREFIX}disk": disk.name,
        f"{PREFIX}role": disk.role.value,
        f"{PREFIX}format": disk.format or "",
        f"{PREFIX}schema": str(SCHEMA_VERSION),
    }


def write_mirror(record: Record, runner: Runner) -> None:
    """Tag every LVM disk and set image-meta on every RBD disk of ``record``."""
    for disk in record.disks:
        if disk.backend is Backend.LVM:
            _write_lvm(LVM(runner), record.uuid, disk)
        elif disk.backend is Backend.RBD:
            _write_rbd(_rbd(runner, disk), record.uuid, disk)


def read_mirror(disk: DiskLayout, runner: Runner) -> dict[str, str] | None:
    """The ``storagectl.*`` items on a block disk's volume; None if the volume is gone."""
    if disk.backend is Backend.LVM:
        lv = LVM(runner).get_volume(disk.volume_group or "", disk.volume or "")
        return None if lv is None else _lvm_items(lv.tags)
    if disk.backend is Backend.RBD:
        rbd = _rbd(runner, disk)
        if not rbd.exists(disk.image or ""):
            return None
        return {k: v for k, v in rbd.get_meta(disk.image or "").items() if k.startswith(PREFIX)}
    return {}


def _rbd(runner: Runner, disk: DiskLayout) -> RBD:
    return RBD(
        runner,
        pool=disk.pool or "",
        ceph_conf=disk.ceph_conf or "/etc/ceph/ceph.conf",
        user=disk.rbd_user,
    )


def _lvm_items(tags: tuple[str, ...]) -> dict[str, str]:
    items = {}
    for tag in tags:
        parsed = parse_tag(tag)
        if parsed and parsed[0].startswith(PREFIX):
            items[parsed[0]] = parsed[1]
    return items


def _write_lvm(lvm: LVM, uuid: str, disk: DiskLayout) -> None:
    vg, lv = disk.volume_group or "", disk.volume or ""
    want = mirror_items(uuid, disk)
    current = lvm.get_volume(vg, lv)
    have = {t for t in current.tags} if current else set()
    wanted_tags = {safe_tag(k, v) for k, v in want.items()}
    stale = [
        t for t in have if t not in wanted_tags and (parse_tag(t) or ("",))[0].startswith(PREFIX)
    ]
    if stale:
        lvm.remove_tags(vg, lv, stale)
    missing = sorted(wanted_tags - have)
    if missing:
        lvm.add_tags(vg, lv, missing)


def _write_rbd(rbd: RBD, uuid: str, disk: DiskLayout) -> None:
    image = disk.image or ""
    have = rbd.get_meta(image)
    want = mirror_items(uuid, disk)
    for key in [k for k in have if k.startswith(PREFIX) and k not in want]:
        rbd.remove_meta(image, key)
    for key, value in want.items():
        if have.get(key) != value:
            rbd.set_meta(image, key, value)
