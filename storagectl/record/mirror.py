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

from storagectl.backends import Storage
from storagectl.backends.registry import stored
from storagectl.host.process import Runner
from storagectl.model.layout import DiskLayout
from storagectl.record.record import SCHEMA_VERSION, Record

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
    storage = Storage(runner)
    for disk in record.disks:
        if stored(disk.backend):
            storage.of(disk).write_mirror(disk, mirror_items(record.uuid, disk), PREFIX)


def read_mirror(disk: DiskLayout, runner: Runner) -> dict[str, str] | None:
    """The ``storagectl.*`` items on a block disk's volume; None if the volume is gone."""
    if not stored(disk.backend):
        return {}
    return Storage(runner).of(disk).read_mirror(disk, PREFIX)
