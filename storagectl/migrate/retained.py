"""``storagectl migrate --delete-retained``: remove the sources a migration kept.

The record's ``retained_sources`` are hostile input like the rest of the record, so each
one is checked before anything is deleted: it must belong to this instance (a file in its
directory named after one of its disks, an LV or RBD image with its UUID) and must not be
a location one of its disks uses now. Example item::

    {disk: disk, backend: qcow2, format: qcow2,
     path: /var/lib/nova/instances/U/disk.retained-qcow2,
     retained_at: '2026-11-24T00:10:00Z', migrated_to: flat}
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

from storagectl import errors
from storagectl.layouts import naming
from storagectl.layouts import record as rec
from storagectl.layouts.model import Backend
from storagectl.migrate import roundtrip
from storagectl.migrate.plan import RETAINED_SUFFIX, Location
from storagectl.migrate.targets import Storage
from storagectl.process import Runner

LOG = logging.getLogger(__name__)
_KEYS = ("path", "volume_group", "volume", "pool", "image", "ceph_conf", "user")


class RetainedInvalid(errors.StorageCtlError):
    template = "retained source %(item)s of %(uuid)s refused: %(reason)s"


def delete_retained(instance_dir: str, uuid: str, storage: Storage, runner: Runner) -> list[str]:
    """Remove every retained source of the record; return what was removed."""
    record = rec.read_record(instance_dir, expect_uuid=uuid)
    if record is None:
        raise errors.UsageError(reason=f"instance {uuid} has no storage record")
    # An item at a place a disk uses now is no kept copy (the operator removed it and a
    # migration moved a disk back onto its name): it leaves the record, nothing is removed.
    record, live = roundtrip.drop_live_retained(record)
    for item, disk in live:
        LOG.warning(
            "retained source %s of %s: disk %s uses it now; dropped from the record, not deleted",
            roundtrip.entry_key(item),
            uuid,
            disk,
        )
    in_use = {roundtrip.disk_key(d) for d in record.disks}
    locations = [retained_location(item, uuid, instance_dir) for item in record.retained_sources]
    for loc in locations:
        if roundtrip.loc_key(loc) in in_use:
            raise RetainedInvalid(item=loc.describe(), uuid=uuid, reason="a disk uses it now")
    removed = []
    for loc in locations:
        if storage.remove(loc):
            removed.append(loc.describe())
        else:
            LOG.info("retained source %s was already gone", loc.describe())
    rec.write_record(instance_dir, replace(record, retained_sources=(), written_at=rec.utc_now()))
    return removed


def retained_locations(instance_dir: str, uuid: str) -> list[Location]:
    """What :func:`delete_retained` would remove, checked as it checks; read-only
    (``migrate --delete-retained --dry-run`` and the confirmation)."""
    record = rec.read_record(instance_dir, expect_uuid=uuid)
    if record is None:
        raise errors.UsageError(reason=f"instance {uuid} has no storage record")
    record, _live = roundtrip.drop_live_retained(record)  # dropped, never removed
    in_use = {roundtrip.disk_key(d) for d in record.disks}
    locations = [retained_location(item, uuid, instance_dir) for item in record.retained_sources]
    for loc in locations:
        if roundtrip.loc_key(loc) in in_use:
            raise RetainedInvalid(item=loc.describe(), uuid=uuid, reason="a disk uses it now")
    return locations


def retained_location(item: dict, uuid: str, instance_dir: str) -> Location:
    """The location of a retained item, checked to belong to this instance: a file in
    its directory named ``<disk>``, ``<disk>.retained-<backend>`` or (moved aside by a
    later migration, see roundtrip.py) ``<disk>.retained-<backend>-<n>``; an LV or RBD
    image ``<uuid>_<disk>`` or ``<uuid>_<disk>.retained-<backend>-<n>``."""
    shown = str({k: item.get(k) for k in ("disk", "path", "volume", "image") if k in item})
    try:
        backend = Backend(str(item.get("backend")))
        loc = Location(
            backend=backend.value,
            format=str(item.get("format") or "raw"),
            **{k: str(item[k]) for k in _KEYS if item.get(k) is not None},
        )
    except (ValueError, TypeError) as exc:
        raise RetainedInvalid(item=shown, uuid=uuid, reason=str(exc)) from exc
    disk = str(item.get("disk") or "")
    if not naming.is_nova_disk_name(disk):
        raise RetainedInvalid(item=shown, uuid=uuid, reason=f"{disk!r} is not a Nova disk")
    if loc.kind is Backend.LVM:
        base = naming.lv_name(uuid, disk)
        ok = loc.volume == base or roundtrip.is_aside_of(loc.volume or "", base, "lvm")
        ok = ok and naming.parse_lv_name(loc.volume or "") is not None
        loc.path = f"/dev/{loc.volume_group}/{loc.volume}"
    elif loc.kind is Backend.RBD:
        base = naming.rbd_image_name(uuid, disk)
        ok = loc.image == base or roundtrip.is_aside_of(loc.image or "", base, "rbd")
    elif loc.is_file:
        path = loc.path or ""
        name = os.path.basename(path)
        ok = os.path.dirname(path) == os.path.normpath(instance_dir) and (
            name in (disk, f"{disk}{RETAINED_SUFFIX}{loc.backend}")
            or roundtrip.is_aside_of(name, disk, loc.backend)
        )
    else:
        ok = False
    if not ok:
        raise RetainedInvalid(item=shown, uuid=uuid, reason="not a disk of this instance")
    return loc


_location = retained_location  # the former private name
