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
from collections import defaultdict

from storagectl.backends import Refusal, Storage, remove_command
from storagectl.migrate import roundtrip
from storagectl.migrate.plan import MigrationRefused, Plan
from storagectl.model.location import Location
from storagectl.record import record as rec

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
    checked: set = set()
    for m in plan.moves:
        if names_only:
            _check_names(m, storage, refuse)
            continue
        for loc, target in ((m.source, False), (m.dest, True)):
            backend = storage.of(loc)
            key = (type(backend), target, backend.check_key(loc))
            if key in checked:
                continue
            try:
                backend.check(loc, target=target)  # the cluster answers, the VG exists
            except Refusal as exc:
                raise refuse(str(exc)) from exc
            checked.add(key)
        _check_names(m, storage, refuse)
        m.needed = _needed(m, storage, plan.options.sparse_lvs, shared=plan.options.live)
    if not names_only:
        _check_space(plan, storage, refuse)


def _live_alias_of(loc: Location, source: Location) -> bool:
    from storagectl.host.fsutil import same_file

    a, b = getattr(loc, "path", None), getattr(source, "path", None)
    return bool(a and b) and same_file(a, b)


def _check_names(m, storage: Storage, refuse) -> None:  # noqa: ANN001
    if not storage.exists(m.source):
        raise refuse(
            f"the source of {m.name}, {m.source.describe()}, does not exist "
            "(storagectl audit names what changed)"
        )
    aside = roundtrip.displaced_keys(m)
    for loc, what in roundtrip.must_be_free(m):
        if loc.key() in aside:
            continue  # a retained copy of this instance, moved aside at the create step
        if storage.exists(loc) and _live_alias_of(loc, m.source):
            raise refuse(
                f"{loc.describe()} is a second name of {m.source.describe()}, left by a live "
                "move (QEMU cannot rename an open image): if the guest still runs on it "
                "(virsh domblklist), shut the instance off and start it again (it then opens "
                "the Nova name); then storagectl migrate --delete-retained removes it"
            )
        if storage.exists(loc):
            raise refuse(
                f"{what} {loc.describe()} already exists and is no retained copy in the "
                f"record of this instance, so it is left alone; if nothing needs it, "
                f"remove it ({remove_command(loc)}) and run the migration again"
            )
    for d in m.displaced:
        to = Location.from_record(d["to"])
        if storage.exists(to):
            raise refuse(
                f"{to.describe()}, the new name of the retained copy "
                f"{Location.from_record(d['at']).describe()}, was taken meanwhile; "
                "run the migration again (it picks another name)"
            )


def _needed(m, storage: Storage, sparse_lvs: bool, *, shared: bool) -> int:  # noqa: ANN001
    fixed = storage.of(m.dest).bytes_needed(m.virtual_size, sparse=sparse_lvs)
    return fixed if fixed is not None else storage.data_bytes(m.source, shared=shared)


def _check_space(plan: Plan, storage: Storage, refuse) -> None:  # noqa: ANN001
    groups: dict[str, list] = defaultdict(list)
    for m in plan.moves:
        groups[storage.of(m.copy_dest).space_name(m.copy_dest)].append(m)
    for key, moves in groups.items():
        need = sum(m.needed or 0 for m in moves)
        free = storage.free_bytes(moves[0].copy_dest)
        if free is None:
            LOG.warning("%s: free space unknown (no ceph-mgr statistics); not checked", key)
            continue
        if need > free:
            names = ", ".join(m.name for m in moves)
            raise refuse(f"not enough space: {key} has {free} bytes free, {names} need {need}")
