"""The preflight step: everything that can be checked before anything is changed.

Sources exist; target names are free (for a file target: the temporary name, the name the
source will be kept under, and the final name unless the source holds it) - a name held by
a retained copy of this instance (its record's ``retained_sources``) is not refused but
planned to be moved aside (``DiskMove.displaced``, see roundtrip.py); the VG exists;
Ceph answers; and there is room, sparse-aware: a file or RBD target needs the source's
allocated data (``qemu-img measure``), a thick LV its virtual size rounded to extents.
Each failure is a :class:`~storagectl.migrate.plan.MigrationRefused` naming the disk.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict

from storagectl import errors
from storagectl.backends.lvm import LVM, SPARSE_PREALLOCATED
from storagectl.layouts import record as rec
from storagectl.layouts.model import Backend
from storagectl.migrate import roundtrip
from storagectl.migrate.plan import Location, MigrationRefused, Plan
from storagectl.migrate.targets import Storage

LOG = logging.getLogger(__name__)


def preflight(plan: Plan, storage: Storage, *, names_only: bool = False) -> None:
    """Check the plan against the host now; fill each move's ``needed`` bytes.

    ``names_only``: the full check passed moments ago in this process; only check again
    that the sources exist and the target names are still free.
    """

    def refuse(reason: str) -> MigrationRefused:
        return MigrationRefused(instance=f"{plan.name} ({plan.uuid})", reason=reason)

    if not names_only:
        # Retained copies of earlier migrations in the way are moved aside, not refused.
        record = rec.read_record(plan.instance_dir, expect_uuid=plan.uuid)
        roundtrip.plan_displaced(plan, record, storage)
    pinged: set[tuple[str | None, str | None, str | None]] = set()
    for m in plan.moves:
        if names_only:
            _check_names(m, storage, refuse)
            continue
        for loc in (m.source, m.dest):
            if loc.kind is Backend.RBD and (loc.pool, loc.ceph_conf, loc.user) not in pinged:
                try:
                    storage.rbd(loc).ping()
                except errors.CephUnreachable as exc:
                    raise refuse(f"Ceph is unreachable: {exc}") from exc
                except errors.BackendError as exc:
                    raise refuse(f"pool {loc.pool}: {exc}") from exc
                pinged.add((loc.pool, loc.ceph_conf, loc.user))
        if m.dest.kind is Backend.LVM:
            try:
                LVM(storage.runner).volume_group(m.dest.volume_group or "")
            except errors.VolumeGroupNotFound as exc:
                raise refuse(f"{exc} (--volume-group)") from exc
        _check_names(m, storage, refuse)
        m.needed = _needed(m, storage, plan.options.sparse_lvs)
    if not names_only:
        _check_space(plan, storage, refuse)


def _check_names(m, storage: Storage, refuse) -> None:  # noqa: ANN001
    if not storage.exists(m.source):
        raise refuse(
            f"the source of {m.name}, {m.source.describe()}, does not exist "
            "(storagectl audit names what changed)"
        )
    aside = roundtrip.displaced_keys(m)
    for loc, what in roundtrip.must_be_free(m):
        if roundtrip.loc_key(loc) in aside:
            continue  # a retained copy of this instance, moved aside at the create step
        if storage.exists(loc):
            raise refuse(
                f"{what} {loc.describe()} already exists and is no retained copy in the "
                f"record of this instance, so it is left alone; if nothing needs it, "
                f"remove it ({remove_command(loc)}) and run the migration again"
            )
    for d in m.displaced:
        to = Location.from_dict(d["to"])
        if storage.exists(to):
            raise refuse(
                f"{to.describe()}, the new name of the retained copy "
                f"{Location.from_dict(d['at']).describe()}, was taken meanwhile; "
                "run the migration again (it picks another name)"
            )


def remove_command(loc: Location) -> str:
    """The command that removes ``loc`` by hand (a name storagectl does not own)."""
    if loc.kind is Backend.RBD:
        conf = f" --conf {loc.ceph_conf}" if loc.ceph_conf else ""
        user = f" --id {loc.user}" if loc.user else ""
        return f"rbd{conf}{user} rm {loc.pool}/{loc.image}"
    if loc.kind is Backend.LVM:
        return f"lvremove {loc.volume_group}/{loc.volume}"
    if loc.path and os.path.isdir(loc.path) and not os.path.islink(loc.path):
        return f"rm -r -- {loc.path}"
    return f"rm -- {loc.path}"


def _needed(m, storage: Storage, sparse_lvs: bool) -> int:  # noqa: ANN001
    if m.dest.kind is Backend.LVM:
        return SPARSE_PREALLOCATED if sparse_lvs else m.virtual_size
    return storage.data_bytes(m.source)


def _check_space(plan: Plan, storage: Storage, refuse) -> None:  # noqa: ANN001
    groups: dict[str, list] = defaultdict(list)
    for m in plan.moves:
        loc = m.copy_dest
        if loc.kind is Backend.LVM:
            key = f"volume group {loc.volume_group}"
        elif loc.kind is Backend.RBD:
            key = f"RBD pool {loc.pool}"
        else:
            key = f"file system of {os.path.dirname(loc.path or '/')}"
        groups[key].append(m)
    for key, moves in groups.items():
        need = sum(m.needed or 0 for m in moves)
        free = storage.free_bytes(moves[0].copy_dest)
        if free is None:
            LOG.warning("%s: free space unknown (no ceph-mgr statistics); not checked", key)
            continue
        if need > free:
            names = ", ".join(m.name for m in moves)
            raise refuse(f"not enough space: {key} has {free} bytes free, {names} need {need}")
