"""persist: turn an inferred layout into the instance's explicit record, once.

Per instance, under its lock: refuse when inspection found anything critical (the
operator resolves it first); an identical record is left alone (``unchanged``); a
different one is refused with a diff unless ``force`` (the old file is kept as a
timestamped backup); otherwise the in-band mirror (LVM tags / RBD image-meta) is written
first - it is idempotent, and re-asserted for unchanged records - and then
``storage.yaml``, atomically. One instance's refusal
never stops the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from storagectl import errors
from storagectl.backends import registry
from storagectl.backends.registry import stored
from storagectl.host.config import NovaConfig
from storagectl.host.locks import instance_lock
from storagectl.host.process import Runner
from storagectl.inspect.inspection import InspectionResult
from storagectl.inspect.verify import read_disk_info
from storagectl.migrate.roundtrip import drop_live_retained, entry_key
from storagectl.model import attrs
from storagectl.model.layout import InstanceLayout, blocking
from storagectl.record import record as rec
from storagectl.record.mirror import write_mirror

LOG = logging.getLogger(__name__)

WRITTEN, UNCHANGED, REFUSED, WOULD_WRITE = "written", "unchanged", "refused", "would-write"


class PersistInterrupted(errors.StorageCtlError):
    """Ctrl-C: how far it got (each record is written atomically, so none is torn)."""

    template = (
        "interrupted after %(done)s of %(total)s instances: %(written)s record(s) written; "
        "%(current)s was in progress (its record is either the old or the new one, never "
        "torn); run persist again to finish (records already written are unchanged)"
    )
    exit_code = 130


@dataclass
class PersistOutcome:
    uuid: str
    name: str
    status: str
    reason: str | None = None
    path: str | None = None
    diff: str | None = None
    backup: str | None = None
    record: rec.Record | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **attrs(self, "uuid", "name", "status", "reason", "path", "backup"),
            "diff": self.diff or None,
        }


def evidence_for(layout: InstanceLayout, nova: NovaConfig) -> list[str]:
    """The sources that the inference of ``layout`` actually used."""
    used = ["domain-xml"]
    if nova.files:
        used.append("nova.conf")
    if read_disk_info(nova.instance_dir(layout.uuid))[0]:
        used.append("disk.info")
    kinds = {registry.backend_class(d.backend.value) for d in layout.disks if stored(d.backend)}
    return used + [b.EVIDENCE for b in registry.all_backends() if b in kinds]


def persist(
    result: InspectionResult,
    nova: NovaConfig,
    runner: Runner,
    *,
    remote_hosts: Sequence[str] = (),
    **options: Any,
) -> list[PersistOutcome]:
    """:func:`persist_one` for each instance of ``result``, with its ``options``
    (``lock_path``, ``force``, ``dry_run``); those of ``remote_hosts`` are refused."""
    outcomes: list[PersistOutcome] = []
    for layout in result.instances:
        try:
            outcomes.append(
                persist_one(layout, nova, runner, remote=layout.host in remote_hosts, **options)
            )
        except KeyboardInterrupt:
            raise PersistInterrupted(
                written=sum(o.status == WRITTEN for o in outcomes),
                done=len(outcomes),
                total=len(result.instances),
                current=f"{layout.name} ({layout.uuid})",
            ) from None
    return outcomes


def persist_one(
    layout: InstanceLayout,
    nova: NovaConfig,
    runner: Runner,
    *,
    lock_path: str,
    force: bool = False,
    dry_run: bool = False,
    remote: bool = False,
) -> PersistOutcome:
    out = PersistOutcome(layout.uuid, layout.name, REFUSED)
    if remote:
        out.reason = (
            f"host {layout.host} is remote: run storagectl persist on the compute "
            "host itself (records live in its instance directories)"
        )
        return out
    critical = blocking(layout.findings)
    if critical:
        out.reason = "critical findings must be resolved first: " + "; ".join(
            f"{f.code} ({f.disk or 'instance'})" for f in critical
        )
        return out
    inst_dir = nova.instance_dir(layout.uuid)
    if not os.path.isdir(inst_dir):
        out.reason = f"instance directory {inst_dir} does not exist"
        return out
    try:
        new = rec.record_from_layout(layout, evidence=evidence_for(layout, nova))
    except errors.StorageCtlError as exc:
        out.reason = str(exc)
        return out
    out.record = new
    out.path = str(rec.record_path(inst_dir))
    if dry_run:
        # What a real run would decide, from the record on disk now; nothing is
        # written, locked or mirrored.
        _decide(out, new, inst_dir, force, dry_run=True)
        return out
    try:
        with instance_lock(lock_path, layout.uuid):
            return _write_locked(out, new, inst_dir, runner, force)
    except errors.StorageCtlError as exc:
        out.status, out.reason = REFUSED, str(exc)
        return out


def _decide(
    out: PersistOutcome, new: rec.Record, inst_dir: str, force: bool, *, dry_run: bool
) -> rec.Record | None:
    """Compare ``new`` with the record on disk: set ``out`` to ``unchanged``, ``refused``
    (with the diff) or - when it must be written - ``would-write``; return the old
    record (or None)."""
    try:
        old = rec.read_record(inst_dir, expect_uuid=new.uuid)
    except errors.RecordInvalid as exc:
        if not force:
            out.reason = f"{exc}; fix or remove it, or use --force to replace it"
            return None
        old = None
    if old is not None and old.same_layout(new):
        out.status = UNCHANGED
        return old
    if old is not None and not force:
        out.diff = rec.diff_records(old, new)
        out.reason = f"a different record exists at {out.path} (see the diff; --force replaces it)"
        return old
    out.status = WOULD_WRITE
    if dry_run and force and os.path.exists(out.path or ""):
        out.reason = "the existing record would be replaced (kept as storage.yaml.<UTC>.bak)"
    return old


def _repair_retained(out: PersistOutcome, inst_dir: str, uuid: str) -> bool:
    """The one repair persist makes in place: a ``retained_sources`` item at a place a
    disk uses now (no kept copy any more, see migrate/roundtrip.py) is dropped."""
    try:
        old = rec.read_record(inst_dir, expect_uuid=uuid)
    except errors.RecordInvalid:
        return False  # _decide reports it
    if old is None:
        return False
    repaired, live = drop_live_retained(old)
    if not live:
        return False
    rec.write_record(inst_dir, replace(repaired, written_at=rec.utc_now()))
    out.status = WRITTEN
    out.reason = "dropped from retained_sources (a disk uses it now): " + ", ".join(
        f"{entry_key(item)} (disk {disk})" for item, disk in live
    )
    return True


def _write_locked(
    out: PersistOutcome, new: rec.Record, inst_dir: str, runner: Runner, force: bool
) -> PersistOutcome:
    if not force and _repair_retained(out, inst_dir, new.uuid):
        return out
    old = _decide(out, new, inst_dir, force, dry_run=False)
    if out.status == UNCHANGED and old is not None:
        # The record stays as it is; its mirror is re-asserted (only differing tags/meta
        # are written), so a tag removed by hand is repaired by running persist again.
        write_mirror(old, runner)
        return out
    if out.status != WOULD_WRITE:
        return out
    write_mirror(new, runner)
    if force and os.path.exists(out.path or ""):
        backup = rec.backup_record(inst_dir)
        out.backup = str(backup) if backup else None
    rec.write_record(inst_dir, new)
    out.status = WRITTEN
    return out
