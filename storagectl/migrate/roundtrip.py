"""Moving an instance back to where a retained source of it sits (round trips).

A migration keeps its sources and lists them in the record's ``retained_sources``
(``migrate --delete-retained`` removes them). A later migration of the same instance can
need one of those names again: ``flat -> rbd`` keeps the flat file as ``disk``, and
``rbd -> flat`` writes ``disk``; ``rbd -> flat`` keeps the image ``vms/U_disk``, and
``flat -> rbd`` creates it; ``flat -> qcow2 -> flat -> qcow2`` wants ``disk.retained-flat``
twice. Such a retained copy is *displaced*: at the create step it is renamed to a fresh
name of the same kind (kept, and listed under that name), and with ``--to ...
--delete-retained`` also removed at the cleanup step. Nothing is reused: the target is
always a fresh copy of the current disk.

The displacements are computed by preflight and journaled in the plan
(``DiskMove.displaced``, items ``{"entry": <the record's item>, "at": <Location>, "to":
<Location>}``). Each rename is one atomic operation (``rename(2)``, ``rbd rename``,
``lvrename``) and every function here checks what is already done, so a kill -9 leaves
``--resume`` (which renames what is left) or ``--rollback`` (which renames back) a way
forward.

A retained entry whose location is a disk the instance uses now is wrong (the operator
removed the kept copy and migrated back onto its name): migrate drops it from the record,
``audit`` reports it (``retained-in-use``) and ``persist`` drops it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace

from storagectl.backends import registry
from storagectl.model.layout import DiskLayout
from storagectl.model.location import Location
from storagectl.model.naming import aside_name, is_aside_of  # noqa: F401 - their old home

LOG = logging.getLogger(__name__)

#: Keys of a retained item that say where it is.
LOCATION_KEYS = ("path", "volume_group", "volume", "pool", "image")


# -- where an item or a disk is ----------------------------------------------------------


def entry_key(entry: dict) -> str | None:
    """A comparable name of where a retained item is (``Location.key``)::

    rbd:vms/U_disk      /dev/nova/U_disk      /var/lib/nova/instances/U/disk

    None when the item says no place (it is then never matched with anything).
    """
    try:
        return Location.from_record(entry).key()
    except ValueError:
        return None


def disk_key(disk: DiskLayout) -> str | None:
    """The same name for a disk of the record (None: a volume, or no place)."""
    try:
        return Location.of_disk(disk).key()
    except ValueError:
        return None


def loc_key(loc: Location) -> str:
    return loc.key()


def live_retained(disks: Iterable[DiskLayout], entries: Iterable[dict]) -> list[tuple[dict, str]]:
    """``(item, disk name)`` for each retained item at a location a disk uses now."""
    live = {disk_key(d): d.name for d in disks if disk_key(d)}
    return [(e, live[k]) for e in entries if (k := entry_key(e)) in live]


def without_live(entries: Sequence[dict], disks: Iterable[DiskLayout]) -> tuple[dict, ...]:
    """``entries`` without the items a disk uses now, and without an older item at the
    place of a newer one (the later entry is the one that is true)."""
    live = {disk_key(d) for d in disks}
    kept: list[dict] = []
    seen: set[str] = set()
    for e in reversed(list(entries)):
        k = entry_key(e)
        if k is not None and (k in live or k in seen):
            LOG.info("retained_sources: dropped %s (%s)", k, "in use" if k in live else "stale")
            continue
        if k is not None:
            seen.add(k)
        kept.append(e)
    return tuple(reversed(kept))


def drop_live_retained(record):  # noqa: ANN001, ANN201 - rec.Record -> (Record, [(item, disk)])
    """The record without its retained items that a disk uses now, and those items."""
    live = live_retained(record.disks, record.retained_sources)
    if not live:
        return record, []
    dropped = [e for e, _ in live]
    kept = tuple(e for e in record.retained_sources if e not in dropped)
    return replace(record, retained_sources=kept), live


def live_message(uuid: str, key: str, disk: str) -> str:
    return (
        f"retained_sources lists {key}, which disk {disk} uses now (not a kept copy any "
        f"more); storagectl persist {uuid} drops the entry"
    )


# -- names for displaced copies -----------------------------------------------------------


def _aside(entry: dict, at: Location, uuid: str, n: int) -> Location:
    disk = str(entry.get("disk") or "")
    return registry.backend_class(at.backend).aside(at, uuid, disk, n)


# -- the plan -----------------------------------------------------------------------------


def must_be_free(m) -> list:  # noqa: ANN001 - a DiskMove -> [(Location, what)]
    """The names a move needs free, with what each is (see preflight)."""
    free = []
    if m.temp_path:
        free.append((m.copy_dest, "the temporary copy"))
        if m.retained_path:
            free.append((m.retained, "the name its source will be kept under"))
        if m.source.key() != m.dest.key():
            free.append((m.dest, "the target"))
    else:
        free.append((m.dest, "the target"))
    return free


def plan_displaced(plan, record, storage) -> None:  # noqa: ANN001
    """Fill each move's ``displaced``: the retained copies of this instance (per its
    record) that hold a name the move needs, each with the fresh name it will move to.

    An item that fails the ownership checks of ``--delete-retained`` is never moved (the
    name then counts as taken, and preflight refuses). An item whose copy is gone needs no
    move (the record drops it at the switch).
    """
    from storagectl.migrate.retained import RetainedInvalid, retained_location

    live = {disk_key(d) for d in record.disks} if record is not None else set()
    entries = list(record.retained_sources) if record is not None else []
    taken = {entry_key(e) for e in entries}
    for m in plan.moves:
        m.displaced = []
    for m in plan.moves:
        for loc, _what in must_be_free(m):
            key = loc_key(loc)
            if key in live:
                continue
            for entry in entries:
                if entry_key(entry) != key:
                    continue
                try:
                    at = retained_location(entry, plan.uuid, plan.instance_dir)
                except RetainedInvalid as exc:
                    LOG.warning("%s", exc)
                    continue
                if loc_key(at) != key or not storage.exists(at):
                    continue
                n = 1
                while True:
                    to = _aside(entry, at, plan.uuid, n)
                    if loc_key(to) not in taken and not storage.exists(to):
                        break
                    n += 1
                taken.add(loc_key(to))
                m.displaced.append(
                    {"entry": dict(entry), "at": at.to_record(), "to": to.to_record()}
                )
                break


def _pairs(plan):  # noqa: ANN001, ANN202
    for m in plan.moves:
        for d in getattr(m, "displaced", None) or ():
            yield m, d, Location.from_record(d["at"]), Location.from_record(d["to"])


def displaced_keys(m) -> set[str]:  # noqa: ANN001 - a DiskMove
    """Names a move frees by displacing a retained copy (preflight does not refuse them)."""
    return {loc_key(Location.from_record(d["at"])) for d in getattr(m, "displaced", None) or ()}


def describe_lines(m, delete: bool) -> list[str]:  # noqa: ANN001
    """Plan lines for a move's displaced copies."""
    lines = []
    for d in getattr(m, "displaced", None) or ():
        at, to = Location.from_record(d["at"]), Location.from_record(d["to"])
        fate = (
            f"renamed to {to.describe()} and deleted at cleanup (--delete-retained)"
            if delete
            else f"kept, renamed to {to.describe()} (--delete-retained deletes it instead)"
        )
        lines.append(
            f"      retained copy {at.describe()} of an earlier migration is in the way: {fate}"
        )
    return lines


# -- the steps ----------------------------------------------------------------------------


class DisplaceRefused(Exception):
    """The new name of a retained copy was taken by something else: nothing renamed."""


def was_moved(d: dict, at, to, storage) -> bool:  # noqa: ANN001
    """Whether the retained copy ``at`` of entry ``d`` was moved to ``to``: journaled
    (``d["moved"]``), or - a crash between the rename and the journal write - its old
    name is free and its new name taken (nothing else creates ``at`` before the flag)."""
    return bool(d.get("moved")) or (storage.exists(to) and not storage.exists(at))


def displace(plan, storage, save=None) -> None:  # noqa: ANN001
    """Rename each displaced copy to its new name (create step; idempotent), and journal
    each rename (``d["moved"]``, then ``save()``) before anything is created at its old
    name: later steps, resume and rollback act on that flag, never on a guess from which
    names exist. A new name taken meanwhile by anything else refuses (nothing is renamed
    onto it, and the retained copy keeps its name)."""
    for _m, d, at, to in _pairs(plan):
        if d.get("moved"):
            continue
        if was_moved(d, at, to, storage):
            d["moved"] = True  # renamed before a crash, not yet journaled
        elif not storage.exists(at):
            LOG.warning("retained copy %s is gone; nothing to move aside", at.describe())
            continue
        elif storage.exists(to):
            raise DisplaceRefused(
                f"{to.describe()}, the new name of the retained copy {at.describe()}, was "
                "taken meanwhile by something that is not this migration's"
            )
        else:
            storage.rename(at, to)
            if storage.exists(at) or not storage.exists(to):
                raise DisplaceRefused(f"{at.describe()} was not renamed to {to.describe()}")
            d["moved"] = True
        if save is not None:
            save()


def holds_retained(m, storage) -> bool:  # noqa: ANN001
    """Whether ``m``'s copy target still is a retained copy not yet moved aside (then it
    is not this migration's to remove)."""
    target = loc_key(m.copy_dest)
    for d in getattr(m, "displaced", None) or ():
        at, to = Location.from_record(d["at"]), Location.from_record(d["to"])
        if loc_key(at) == target and not was_moved(d, at, to, storage):
            return True
    return False


def restore(plan, storage) -> None:  # noqa: ANN001
    """Rollback: rename the displaced copies back (after the targets are removed)."""
    for _m, d, at, to in _pairs(plan):
        if d.get("moved") and storage.exists(to) and not storage.exists(at):
            storage.rename(to, at)  # only what this migration moved, never onto a name
        elif not d.get("moved") and storage.exists(to) and not storage.exists(at):
            storage.rename(to, at)  # renamed, then a crash before the journal said so


def remove_displaced(plan, storage) -> list[str]:  # noqa: ANN001
    """Cleanup with ``--delete-retained``: remove the displaced copies (idempotent)."""
    # Only copies the journal says were moved: ``to`` is then the retained copy itself.
    return [
        to.describe() for _m, d, _at, to in _pairs(plan) if d.get("moved") and storage.remove(to)
    ]


def retained_after(
    entries: Sequence[dict],
    plan,
    *,
    keep_displaced: bool,  # noqa: ANN001
) -> list[dict]:
    """The record's retained items once the displacements are done: a displaced item
    names its new place, or is gone (``keep_displaced=False``, the copy deleted)."""
    moved = {}
    for _m, d, _at, to in _pairs(plan):
        moved[entry_key(d["entry"])] = (d["entry"], to)
    out = []
    for e in entries:
        hit = moved.get(entry_key(e))
        if hit is None or hit[0] != e:
            out.append(e)
            continue
        if not keep_displaced:
            continue
        to = hit[1]
        new = {k: v for k, v in e.items() if k not in LOCATION_KEYS}
        new |= {k: v for k, v in to.to_record().items() if k in LOCATION_KEYS}
        out.append(new)
    return out
