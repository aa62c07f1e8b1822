"""audit: everything inspect flags, plus records against reality, orphans and the cache.

Read-only. Built on one inspection run (records trusted where they exist), then:

- ``metadata-missing``  an instance with no record yet;
- ``metadata-drift``    the domain XML or the storage no longer matches the record (disk
  added/removed, source moved, format or backend changed, size shrunk, mirror tags/meta
  that disagree);
- ``orphan-volume``     instance storage no defined domain owns: instance directories,
  ``<uuid>_resize`` leftovers, LVs ``<uuid>_*`` in the VG, RBD images ``<uuid>_*`` in the
  pool, leftover ``nova-resize`` snapshots;
- ``orphan-metadata``   a record whose instance is no longer defined;
- ``unowned-volumes``   (info) RBD images / instance directories that no scanned domain
  owns but that this host has no trace of either: in a pool (or an instances_path)
  shared by other compute hosts they are those hosts' instances, so they are counted,
  not reported one by one - unless the audit is told it sees every host (``complete``);
- ``base-image-unsafe`` an image-cache entry failing the inspector's safety checks;
- ``base-image-unused`` an image-cache entry no disk uses;
- ``retained-in-use``   a ``retained_sources`` item at a place a disk uses now (``persist``
  drops it).

Sources that a migration kept and recorded as retained are not orphans.

Who owns what (storagectl/audit/ownership.py). A per-host audit (the cron job) sees
only its own domains, but a Ceph pool is normally shared by every compute host, and an
instances_path may be too (NFS). A domainless instance directory (``<uuid>``,
``<uuid>_resize``, ``<uuid>_del``) whose record names another host is that host's; one
without a record is this host's unless instances_path is on a network filesystem. An RBD
image ``<uuid>_*`` that no scanned domain owns is an orphan of *this* host only if the
instance has a directory of this host's (Nova keeps one on the compute host for RBD
instances too), and never while a client has it open (``rbd status``). Everything else
is counted (``unowned-volumes``, and ``AuditReport.unowned`` for monitoring), not
reported one by one. With ``complete=True`` (``audit --complete``: the scanned hosts are
all the hosts using these pools and that path) every directory counts as this run's and
every image no scanned domain owns is an orphan - unless it is open.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from storagectl import errors
from storagectl.audit import ownership
from storagectl.audit.interrupted import interrupted_findings
from storagectl.audit.retained import retained_held
from storagectl.backends import registry
from storagectl.backends.base import OrphanScan
from storagectl.backends.registry import stored
from storagectl.host.config import NovaConfig
from storagectl.host.hosts import is_local_uri
from storagectl.host.process import Runner
from storagectl.inspect.inspection import InspectionResult, inspect_hosts
from storagectl.inspect.storage import StorageView
from storagectl.inspect.verify import inspect_cache_entry
from storagectl.migrate.roundtrip import entry_key, live_message, live_retained
from storagectl.model import naming
from storagectl.model.layout import Code, DiskLayout, Finding, InstanceLayout, Severity
from storagectl.record.mirror import mirror_items, read_mirror
from storagectl.record.record import RECORD_NAME, read_record

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3  # Nagios exit statuses


@dataclass
class AuditReport:
    findings: list[Finding]
    instances: list[InstanceLayout]
    errors: list[str] = field(default_factory=list)  # why (part of) the audit could not run
    # Volumes no scanned domain owns and this host cannot call its own, per place
    # ("rbd:POOL", "dir:INSTANCES_PATH"): exported as a gauge so growth can be alerted on.
    unowned: dict[str, int] = field(default_factory=dict)
    duration: float = 0.0
    finished_at: float = 0.0
    interrupted: dict[str, int] = field(default_factory=dict)  # uuid -> bytes (interrupted.py)
    # uuid -> {"sources", "bytes", "unsized"} of the record's retained_sources (retained.py)
    retained: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def status(self) -> int:
        if self.errors:
            return UNKNOWN
        ranks = {f.severity.rank for f in self.findings}
        if Severity.CRITICAL.rank in ranks:
            return CRITICAL
        return WARNING if Severity.WARNING.rank in ranks else OK

    def summary(self) -> dict[str, Any]:
        by_sev = {s.value: 0 for s in Severity}
        by_code: dict[str, int] = {}
        for f in self.findings:
            by_sev[f.severity.value] += 1
            by_code[f.code] = by_code.get(f.code, 0) + 1
        sources = {"metadata": 0, "inferred": 0}
        for inst in self.instances:
            sources[inst.source] = sources.get(inst.source, 0) + 1
        return {
            "status": self.status,
            "instances": len(self.instances),
            "instances_by_source": sources,
            "findings_by_severity": by_sev,
            "findings_by_code": dict(sorted(by_code.items())),
            "errors": self.errors,
            "unowned": dict(sorted(self.unowned.items())),
            # Added for the fleet report (absent from older output): uuid -> bytes held.
            "interrupted_migrations": dict(sorted(self.interrupted.items())),
            "retained_sources": dict(sorted(self.retained.items())),
            "duration_seconds": round(self.duration, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        # The host a finding is about: its instance's, else this machine (the image
        # cache, instances_path and pools are seen from here).
        hosts = {i.uuid: i.host for i in self.instances}
        here = _this_host()
        return {
            "findings": [
                with_host(f.to_dict(), hosts.get(f.instance or "") or here) for f in self.findings
            ],
            "summary": self.summary(),
        }


def with_host(finding: dict[str, Any], host: str) -> dict[str, Any]:
    """A finding's dict with ``host`` after ``code``: every finding in JSON names its host."""
    out = {k: v for k, v in finding.items() if k in ("severity", "code")}
    out["host"] = host
    out.update((k, v) for k, v in finding.items() if k not in out)
    return out


def _this_host() -> str:
    import socket

    return socket.gethostname()


def run_audit(
    uris: Sequence[str],
    nova: NovaConfig,
    runner: Runner,
    *,
    complete: bool = False,
    lock_path: str | None = None,
) -> AuditReport:
    """Audit the hosts of ``uris``; ``complete``: they are every host sharing the pools
    and instances_path (see the module docstring)."""
    started = time.monotonic()
    result = inspect_hosts(uris, nova, runner)
    report = AuditReport(findings=[], instances=result.instances)
    report.errors += [f"cannot scan {h.uri}: {h.error}" for h in result.failed_hosts]
    for inst in result.instances:
        report.findings += inst.findings
        report.findings += _record_checks(inst, result, runner)
    storage = StorageView(runner)
    if not result.failed_hosts:  # orphans only when every domain is known
        report.findings += _orphans(result, nova, storage, report, complete=complete)
    report.findings += _image_cache(result, nova, storage)
    report.findings += interrupted_findings(nova.instances_path, report.interrupted, lock_path)
    report.retained = retained_held(result.retained, nova.instances_path)
    report.duration = time.monotonic() - started
    report.finished_at = time.time()
    return report


def _record_checks(inst: InstanceLayout, result: InspectionResult, runner: Runner) -> list[Finding]:
    if inst.host in result.remote_hosts:
        return []
    if inst.source != "metadata":
        return [
            Finding.of(
                Code.METADATA_MISSING,
                inst.uuid,
                None,
                f"instance {inst.name} has no storage record yet (storagectl persist {inst.uuid})",
            )
        ]
    out = [
        Finding.of(Code.METADATA_DRIFT, inst.uuid, d.disk, d.message)
        for d in result.drift.get(inst.uuid, [])
    ]
    for disk in inst.disks:
        if stored(disk.backend) and registry.backend_class(disk.backend.value).MIRRORED:
            out += _mirror_drift(inst.uuid, disk, runner)
    # A retained_sources item where a disk is now (storagectl/migrate/roundtrip.py).
    for item, disk_name in live_retained(inst.disks, result.retained.get(inst.uuid, ())):
        message = live_message(inst.uuid, str(entry_key(item)), disk_name)
        out.append(Finding.of(Code.RETAINED_IN_USE, inst.uuid, disk_name, message))
    return out


def _mirror_drift(uuid: str, disk: DiskLayout, runner: Runner) -> list[Finding]:
    try:
        have = read_mirror(disk, runner)
    except errors.StorageCtlError:
        return []  # unreachable storage is already reported by verification
    if have is None:
        return []  # the volume is gone: disk-missing says so
    want = mirror_items(uuid, disk)
    wrong = sorted(k for k in want if have.get(k) != want[k])
    if not wrong:
        return []
    return [
        Finding.of(
            Code.METADATA_DRIFT,
            uuid,
            disk.name,
            f"{disk.location}: storagectl tags/meta {', '.join(wrong)} do not match the record",
        )
    ]


def _retained(result: InspectionResult) -> set[str]:
    kept: set[str] = set()
    for sources in result.retained.values():
        for src in sources:
            for key in ("path", "volume", "image"):
                if src.get(key):
                    kept.add(str(src[key]))
    return kept


def _orphans(
    result: InspectionResult,
    nova: NovaConfig,
    storage: StorageView,
    report: AuditReport,
    *,
    complete: bool,
) -> list[Finding]:
    defined = {i.uuid for i in result.instances}
    kept = _retained(result)
    owners = None
    if not complete:
        local = any(is_local_uri(h.uri) for h in result.hosts)
        owners = ownership.host_names((h.hostname for h in result.hosts), local=local)
    out, traces = _orphan_dirs(nova, defined, kept, owners, report)
    scan = OrphanScan(
        storage,
        nova,
        result.instances,
        defined,
        kept,
        traces,
        complete,
        report.errors,
        lambda *args: _unowned(report, *args),
    )
    for backend in registry.all_backends():
        out += backend.orphans(scan)
    return out


def _orphan_dirs(
    nova: NovaConfig,
    defined: set[str],
    kept: set[str],
    owners: frozenset[str] | None,
    report: AuditReport,
) -> tuple[list[Finding], set[str]]:
    """Orphaned instance directories and records, and the uuids this host has a
    directory of. ``owners``: the names of the scanned hosts (None: ``complete``, every
    directory is this run's)."""
    out: list[Finding] = []
    traces: set[str] = set()
    try:
        entries = list(os.scandir(nova.instances_path))
    except OSError:
        return out, traces
    shared = owners is not None and ownership.is_shared_path(nova.instances_path)
    foreign = unknown = 0
    for entry in sorted(entries, key=lambda e: e.name):
        name = entry.name
        uuid = name[:36]
        if not entry.is_dir(follow_symlinks=False) or not naming.is_uuid(uuid):
            continue
        suffix = name[36:]
        if suffix not in ("", "_resize", "_del"):
            continue
        if suffix == "" and uuid in defined:
            continue
        if owners is not None:
            # <uuid>_resize and <uuid>_del are the instance directory moved aside by
            # Nova: the record moved with it.
            owner = _recorded_host(entry.path, uuid)
            if owner is not None and not ownership.is_one_of(owner, owners):
                foreign += 1  # another host's instance on a shared instances_path
                continue
            if owner is None and shared:
                unknown += 1  # no record on a network filesystem: could be anyone's
                continue
        traces.add(uuid)
        if entry.path in kept:
            continue
        if suffix == "" and os.path.exists(os.path.join(entry.path, RECORD_NAME)):
            out.append(
                Finding.of(
                    Code.ORPHAN_METADATA,
                    uuid,
                    None,
                    f"record {os.path.join(entry.path, RECORD_NAME)} belongs to no defined domain",
                )
            )
            continue
        what = {
            "": "instance directory",
            "_resize": "resize leftover",
            "_del": "deletion leftover",
        }[suffix]
        out.append(
            Finding.of(
                Code.ORPHAN_VOLUME,
                uuid,
                None,
                f"{what} {entry.path} belongs to no defined domain",
            )
        )
    out += _unowned(
        report,
        f"dir:{nova.instances_path}",
        ("instance directory", "instance directories"),
        f"in {nova.instances_path}",
        [
            (foreign, "recorded as other hosts'"),
            (
                unknown,
                "without a record on a network filesystem (run persist on every host "
                "sharing it, or audit them all together with --complete)",
            ),
        ],
    )
    return out, traces


def _unowned(
    report: AuditReport,
    where: str,
    noun: tuple[str, str],
    place: str,
    reasons: list[tuple[int, str]],
) -> list[Finding]:
    """The one unowned-volumes finding of a pool or path, its count recorded in
    ``report.unowned`` under ``where``; nothing when every count is 0.

    ``noun``: singular and plural; ``reasons``: (count, why) pairs, the zero ones left out.
    """
    n = sum(count for count, _ in reasons)
    if not n:
        return []
    report.unowned[where] = n
    why = "; ".join(f"{count} {text}" for count, text in reasons if count)
    return [
        Finding.of(
            Code.UNOWNED_VOLUMES,
            None,
            None,
            f"{n} {noun[0] if n == 1 else noun[1]} {place} "
            f"{'belongs' if n == 1 else 'belong'} to no domain of the scanned host(s): {why}",
        )
    ]


def _recorded_host(instance_dir: str, uuid: str) -> str | None:
    """The host a directory's record names; None without a readable record."""
    try:
        record = read_record(instance_dir, expect_uuid=uuid)
    except errors.StorageCtlError:
        return None  # an unreadable record is no evidence either way
    return record.host if record else None


def _image_cache(result: InspectionResult, nova: NovaConfig, storage: StorageView) -> list[Finding]:
    """Every entry of the image cache, whatever its name (verify.inspect_cache_entry)."""
    cache = nova.image_cache_path
    try:
        entries = sorted(os.scandir(cache), key=lambda e: e.name)
    except OSError:
        return []
    real = lambda path: storage.resolve(path)[0]  # noqa: E731 - realpath, cached dirs
    used = {real(d.backing.path) for i in result.instances for d in i.disks if d.backing}
    scanned = {e.path: inspect_cache_entry(e.path, cache, storage.inspect_cached) for e in entries}
    below = {real(path): found.below for path, found in scanned.items()}
    todo = list(used)
    while todo:  # the bases below a used base are used too
        for base in below.get(todo.pop(), ()):
            if base not in used:
                used.add(base)
                todo.append(base)
    out: list[Finding] = []
    for entry in entries:
        problems = scanned[entry.path].problems
        if problems:
            out.append(
                Finding.of(
                    Code.BASE_IMAGE_UNSAFE,
                    None,
                    entry.name,
                    f"image cache entry {entry.path}: {'; '.join(problems)}",
                )
            )
        if entry.is_file(follow_symlinks=False) and real(entry.path) not in used:
            out.append(
                Finding.of(
                    Code.BASE_IMAGE_UNUSED,
                    None,
                    entry.name,
                    f"image cache entry {entry.path} is used by no disk",
                )
            )
    return out
