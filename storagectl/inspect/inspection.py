"""One inspection run: scan hosts, then infer each selected instance's layout.

This is what ``storagectl inspect`` (and later persist/audit) call. The result keeps
hosts that could not be scanned and selectors that matched nothing, so the CLI can set
its exit status without losing the instances that were inspected.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial

from storagectl import errors
from storagectl.host.config import NovaConfig
from storagectl.host.hosts import (
    LIVE_ALIAS_MARK,
    HostScan,
    ScannedDomain,
    is_local_uri,
    scan_hosts,
)
from storagectl.host.process import Runner
from storagectl.inspect.infer import classify_domain, infer_instance, inferred_layout
from storagectl.inspect.prefetch import RecordPrefetch
from storagectl.inspect.storage import StorageView
from storagectl.inspect.verify import Checker, verify_disk
from storagectl.model.layout import (
    HOSTILE_CONTENT_ERRORS,
    Code,
    Finding,
    HostReport,
    InstanceLayout,
    content_error,
)
from storagectl.record.record import Record, read_record
from storagectl.record.recorded import Drift, layout_from_record

LOG = logging.getLogger(__name__)


@dataclass
class InspectionResult:
    hosts: list[HostReport]
    instances: list[InstanceLayout]
    not_found: list[str] = field(default_factory=list)
    # Per instance uuid, how the domain XML differs from its record (audit reports it).
    drift: dict[str, list[Drift]] = field(default_factory=dict)
    remote_hosts: list[str] = field(default_factory=list)
    # Per instance uuid, the sources a migration kept (from the record): not orphans.
    retained: dict[str, tuple[dict, ...]] = field(default_factory=dict)

    @property
    def failed_hosts(self) -> list[HostReport]:
        return [h for h in self.hosts if h.error]

    def to_dict(self) -> dict:
        return {
            "hosts": [h.to_dict() for h in self.hosts],
            "instances": [i.to_dict() for i in self.instances],
        }


def inspect_hosts(
    uris: Sequence[str],
    nova: NovaConfig,
    runner: Runner,
    selectors: Sequence[str] = (),
    *,
    use_records: bool = True,
) -> InspectionResult:
    """Scan ``uris`` and give every selected instance's layout: from its record when it
    has a valid one (``use_records``), else inferred. Sorted by host (in ``uris``
    order), then name and uuid."""
    uris = list(uris)
    wanted = {s.lower() if len(s) == 36 else s for s in selectors}
    records: dict[str, Record | errors.StorageCtlError | None] = {}

    def read_early(scan: HostScan, dom: ScannedDomain) -> None:
        # While the next domains' XML is on its way: a record is one small file, read
        # by the prefetching child when there is one (bound by the with below), else here.
        uuid = dom.info.uuid
        if scan.local and use_records and (not wanted or {uuid, dom.info.name} & wanted):
            if prefetch is not None:
                prefetch.want(uuid)
            else:
                records[uuid] = _read(nova, uuid)

    # Every instance of the host: its record read by a second process meanwhile.
    forked = use_records and not wanted and any(is_local_uri(u) for u in uris)
    with RecordPrefetch(lambda uuid: _read(nova, uuid)) if forked else nullcontext() as prefetch:
        scans = scan_hosts(uris, on_domain=read_early)
        if prefetch is not None:
            records.update(prefetch.results())
    storage = StorageView(runner)
    result = InspectionResult(hosts=[s.report for s in scans], instances=[])
    seen: set[str] = set()
    for scan in scans:
        if scan.broken:
            names = ", ".join(f"{n} ({why})" for n, why in scan.broken)
            LOG.warning("unreadable domain XML on %s: %s", scan.report.uri, names)
            scan.report.error = f"{len(scan.broken)} domain(s) with unreadable XML: {names}"
        host = scan.report.hostname or scan.report.uri
        if not scan.local:
            result.remote_hosts.append(host)
        for dom in sorted(_selected(scan, wanted), key=lambda d: (d.info.name, d.info.uuid)):
            seen.update((dom.info.uuid, dom.info.name))
            build = partial(
                _layout_of,
                dom,
                host,
                nova,
                storage,
                result,
                local=scan.local,
                use_records=use_records,
                record=records.get(dom.info.uuid, _UNREAD),
            )
            result.instances.append(_layout(dom, host, build))
    result.not_found = [s for s in selectors if (s.lower() if len(s) == 36 else s) not in seen]
    return result


def _selected(scan: HostScan, selectors: set[str]) -> list[ScannedDomain]:
    if not selectors:
        return list(scan.domains)
    return [d for d in scan.domains if d.info.uuid in selectors or d.info.name in selectors]


def _layout(dom: ScannedDomain, host: str, build: Callable[[], InstanceLayout]) -> InstanceLayout:
    """One instance's layout, made by ``build`` (:func:`_layout_of`). Whatever a file of
    this instance makes a reader raise that no reader anticipated is a critical finding
    about this instance: one hostile file never takes down the run for every other
    instance."""
    try:
        layout = build()
    except (*HOSTILE_CONTENT_ERRORS, OSError) as exc:
        LOG.debug("instance %s on %s could not be inspected", dom.info.uuid, host, exc_info=True)
        why = content_error(exc) if not isinstance(exc, OSError) else str(exc)
        LOG.warning("instance %s on %s could not be inspected: %s", dom.info.uuid, host, why)
        message = f"instance {dom.info.name} on {host} could not be inspected: {why}"
        failed = Finding.of(Code.INSPECTION_FAILED, dom.info.uuid, None, message)
        return inferred_layout(dom, host, [], [failed])
    layout.findings += live_alias_findings(dom, host)
    return layout


def live_alias_findings(dom: ScannedDomain, host: str) -> list[Finding]:
    """A guest moved live runs on ``disk.migrating``, a hard link of Nova's ``disk``, until
    it is next started (QEMU cannot rename an open image). Nova's block live migration
    builds the new host's disks from the *live* XML: it would create and fill
    ``disk.migrating`` there, and the instance's next hard reboot on that host would look
    for ``disk``. So it is reported until the guest is restarted."""
    out = []
    for target, alias in dom.live_aliases:
        name = os.path.basename(alias).removesuffix(LIVE_ALIAS_MARK)
        message = (
            f"instance {dom.info.name} on {host} runs disk {name} ({target}) on its live "
            f"alias {alias}, the same file under the temporary name of a live move: shut it "
            "off and start it again (or hard reboot it) before any Nova live migration, "
            "which would carry that name to the new host; then storagectl migrate "
            f"--delete-retained {dom.info.uuid} removes the alias"
        )
        out.append(Finding.of(Code.LIVE_ALIAS, dom.info.uuid, name, message))
    return out


def _layout_of(
    dom: ScannedDomain,
    host: str,
    nova: NovaConfig,
    storage: StorageView,
    result: InspectionResult,
    *,
    local: bool,
    use_records: bool,
    record: Record | errors.StorageCtlError | None | object = None,
) -> InstanceLayout:
    invalid: Finding | None = None
    if local and use_records:
        if record is _UNREAD:
            record = _read(nova, dom.info.uuid)
        if isinstance(record, errors.StorageCtlError):
            # Never silently fall back: the layout shown is inferred, and says why.
            invalid = Finding.of(Code.METADATA_INVALID, dom.info.uuid, None, str(record))
            record = None
        if isinstance(record, Record):
            layout, drift = layout_from_record(record, dom, host, nova, storage, local=local)
            if local:
                _verify_unrecorded(layout, drift, dom, nova, storage)
            result.drift[layout.uuid] = drift
            result.retained[layout.uuid] = record.retained_sources
            return layout
    layout = infer_instance(dom, host, nova, storage, local=local)
    if invalid:
        layout.findings.insert(0, invalid)
    return layout


_UNREAD = object()


def _verify_unrecorded(
    layout: InstanceLayout,
    drift: list[Drift],
    dom: ScannedDomain,
    nova: NovaConfig,
    storage: StorageView,
) -> None:
    """The record is checked against the domain XML in both directions: a disk that the
    domain has and the record omits (or places elsewhere) is what qemu really opens, so
    it is inspected as well, with the same checks, and listed."""
    names = {d.disk for d in drift if d.what in ("added", "moved", "backend")}
    if not names:
        return
    chk = Checker(layout.uuid, nova, storage, True)
    recorded = {d.name for d in layout.disks}
    for disk, ddisk in classify_domain(dom.info, chk):
        if disk.name in names:
            verify_disk(disk, chk, backing_hint=ddisk.backing_format if ddisk else None)
            if disk.name not in recorded:
                layout.disks.append(chk.seen(disk))
    seen = {(f.code, f.disk, f.message) for f in layout.findings}
    layout.findings += [f for f in chk.findings if (f.code, f.disk, f.message) not in seen]


def _read(nova: NovaConfig, uuid: str) -> Record | errors.StorageCtlError | None:
    """The instance's record, None if it has none, or why it cannot be read."""
    try:
        return read_record(nova.instance_dir(uuid), expect_uuid=uuid)
    except errors.StorageCtlError as exc:
        return exc
