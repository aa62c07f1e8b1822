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
from storagectl.backends import Storage, registry
from storagectl.host.process import Runner
from storagectl.migrate import roundtrip
from storagectl.model import naming
from storagectl.model.location import Location
from storagectl.record import record as rec

LOG = logging.getLogger(__name__)


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
        loc = Location.from_record(item)
    except (ValueError, TypeError) as exc:
        raise RetainedInvalid(item=shown, uuid=uuid, reason=str(exc)) from exc
    disk = str(item.get("disk") or "")
    if not naming.is_nova_disk_name(disk):
        raise RetainedInvalid(item=shown, uuid=uuid, reason=f"{disk!r} is not a Nova disk")
    if not registry.backend_class(loc.backend).owns_retained(loc, uuid, disk, instance_dir):
        raise RetainedInvalid(item=shown, uuid=uuid, reason="not a disk of this instance")
    return loc


_location = retained_location  # the former private name


def remove_live_aliases(inst_dir: str, in_use: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Remove each ``<disk>.migrating`` that is a second name of ``<disk>`` (the name a
    guest moved live ran on, migrate/switch.py) and that no running QEMU uses now
    (``in_use``: the sources of the live domain XML). Run it before the retained
    sources are deleted: once ``<disk>`` is gone, the alias would hold the data alone."""
    from storagectl.audit.interrupted import TEMP_SUFFIX
    from storagectl.host import fsutil

    out = []
    for name in sorted(os.listdir(inst_dir)):
        if not name.endswith(TEMP_SUFFIX):
            continue
        alias = os.path.join(inst_dir, name)
        nova = alias[: -len(TEMP_SUFFIX)]
        if alias in in_use or not fsutil.same_file(alias, nova):
            continue
        os.unlink(alias)
        out.append(f"removed {alias} (a second name of {nova})")
    if out:
        fsutil.fsync_dir(inst_dir)
    return out
