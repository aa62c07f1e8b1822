"""``storagectl fleet report``: the audits of many hosts merged into one report.

The inputs are files or directories of ``*.json`` files (hidden ones left out), one host
each (storagectl/fleet/sources.py). The report puts the worst hosts first (by status,
then by their critical and warning findings), counts findings per code and host, the
instances without a record, and the bytes retained sources and interrupted migrations
hold; ``-o json`` (:meth:`FleetReport.to_dict`)::

    {"status": 3,
     "summary": {"hosts": 3, "hosts_by_status": {"ok": 1, "warning": 0, "critical": 1,
                 "unknown": 1}, "findings_by_severity": {...}, "instances": 12,
                 "unrecorded_instances": 6, "retained_sources": 1, "retained_bytes": 4096,
                 "interrupted_migrations": 1, "interrupted_bytes": 8192},
     "hosts": [{"host": "cn-18", "status": 3, "problem": "could not audit: ...", ...}],
     "findings_by_code": {"disk-missing": {"total": 1, "hosts": {"cn-17": 1}}},
     "findings": [{"severity": "critical", "code": "disk-missing", "host": "cn-17", ...}]}

Its exit status is the worst host's (Nagios: 0 ok, 1 warning, 2 critical, 3 unknown).
Two files naming one host make that host UNKNOWN (the first file's findings are kept):
which of them is current cannot be told.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from storagectl import errors
from storagectl.audit.audit import OK, UNKNOWN
from storagectl.fleet.sources import SEVERITIES, HostAudit, read_audit

STATUS_NAMES = ("ok", "warning", "critical", "unknown")


class FleetUsageError(errors.StorageCtlError):
    """A PATH that is no input at all: a usage error, UNKNOWN to Nagios."""

    template = "%(path)s: %(reason)s"
    exit_code = UNKNOWN


def input_files(paths: Iterable[str]) -> list[str]:
    """Each file as given, each directory's ``*.json`` (not hidden, sorted), each once."""
    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            try:
                names = sorted(os.listdir(path))
            except OSError as exc:
                raise FleetUsageError(path=path, reason=f"cannot list: {exc.strerror}") from exc
            found = [n for n in names if n.endswith(".json") and not n.startswith(".")]
            if not found:
                raise FleetUsageError(path=path, reason="no *.json file in this directory")
            out += [os.path.join(path, n) for n in found]
        elif os.path.lexists(path):
            out.append(path)
        else:
            raise FleetUsageError(path=path, reason="no such file or directory")
    return list(dict.fromkeys(out))


def _worst_first(h: HostAudit) -> tuple[int, int, int, str]:
    return (-h.status, -h.count("critical"), -h.count("warning"), h.host)


@dataclass(frozen=True)
class FleetReport:
    hosts: tuple[HostAudit, ...]  # worst first

    @property
    def status(self) -> int:
        return max((h.status for h in self.hosts), default=OK)

    @property
    def findings(self) -> list[dict[str, Any]]:
        """Every finding, each naming its host: worst host first, then by severity."""
        rank = {s: i for i, s in enumerate(SEVERITIES)}
        return [
            f
            for h in self.hosts
            for f in sorted(h.findings, key=lambda f: rank[f["severity"]])  # stable
        ]

    def by_code(self) -> dict[str, dict[str, Any]]:
        """code -> ``{"total": n, "hosts": {host: n}}``, hosts worst first."""
        out: dict[str, dict[str, Any]] = {}
        for h in self.hosts:
            for f in h.findings:
                entry = out.setdefault(f["code"], {"total": 0, "hosts": {}})
                entry["total"] += 1
                entry["hosts"][h.host] = entry["hosts"].get(h.host, 0) + 1
        return dict(sorted(out.items()))

    def summary(self) -> dict[str, Any]:
        interrupted = [h.interrupted or {} for h in self.hosts]
        return {
            "status": self.status,
            "hosts": len(self.hosts),
            "hosts_by_status": {
                name: sum(1 for h in self.hosts if h.status == n)
                for n, name in enumerate(STATUS_NAMES)
            },
            "findings_by_severity": {s: sum(h.count(s) for h in self.hosts) for s in SEVERITIES},
            "instances": _total(h.instances for h in self.hosts),
            "unrecorded_instances": _total(h.unrecorded for h in self.hosts),
            "retained_sources": _total(h.retained_sources for h in self.hosts),
            "retained_bytes": _total(h.retained_bytes for h in self.hosts),
            "interrupted_migrations": sum(len(i) for i in interrupted),
            "interrupted_bytes": sum(sum(i.values()) for i in interrupted),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "summary": self.summary(),
            "hosts": [host_dict(h) for h in self.hosts],
            "findings_by_code": self.by_code(),
            "findings": self.findings,
        }


def host_dict(h: HostAudit) -> dict[str, Any]:
    """One host's line of the report; None where its file did not say (an older audit)."""
    return {
        "host": h.host,
        "status": h.status,
        "source": h.source,
        "problem": h.problem,
        "findings_by_severity": {s: h.count(s) for s in SEVERITIES},
        "instances": h.instances,
        "unrecorded_instances": h.unrecorded,
        "retained_sources": h.retained_sources,
        "retained_bytes": h.retained_bytes,
        "retained_unsized": h.retained_unsized,
        "interrupted_migrations": dict(h.interrupted) if h.interrupted is not None else None,
    }


def _total(values: Iterable[int | None]) -> int:
    return sum(v for v in values if v is not None)


def merge(audits: Sequence[HostAudit]) -> FleetReport:
    """The report of these host audits; a host given twice is UNKNOWN, naming both files."""
    first: dict[str, HostAudit] = {}
    for audit in audits:
        seen = first.get(audit.host)
        if seen is None:
            first[audit.host] = audit
            continue
        also = f"also reported by {audit.source}: which one is current cannot be told"
        problem = f"{seen.problem}; {also}" if seen.problem else f"{seen.source} {also}"
        first[audit.host] = replace(seen, status=UNKNOWN, problem=problem)
    return FleetReport(hosts=tuple(sorted(first.values(), key=_worst_first)))


def fleet_report(paths: Iterable[str]) -> FleetReport:
    return merge([read_audit(path) for path in input_files(paths)])
