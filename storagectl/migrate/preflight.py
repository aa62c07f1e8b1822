"""The preflight step: everything that can be checked before anything is changed.

Sources exist; target names are free (for a file target: the temporary name, the name the
source will be kept under, and the final name unless the source holds it); the VG exists;
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
from storagectl.layouts.model import Backend
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
        raise refuse(f"the source of {m.name}, {m.source.describe()}, does not exist")
    for loc, what in _must_be_free(m):
        if storage.exists(loc):
            hint = " (storagectl migrate --delete-retained)" if "retained" in what else ""
            raise refuse(f"{what} {loc.describe()} already exists; remove it first{hint}")


def _must_be_free(m) -> list[tuple[Location, str]]:  # noqa: ANN001 - a DiskMove
    free = []
    if m.temp_path:
        free.append((m.copy_dest, "the temporary copy"))
        if m.retained_path:
            free.append((m.retained, "a retained source"))
        if not (m.source.is_file and m.source.path == m.dest.path):
            free.append((m.dest, "the target"))
    else:
        free.append((m.dest, "the target"))
    return free


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
