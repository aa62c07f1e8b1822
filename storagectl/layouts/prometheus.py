"""The audit's node_exporter textfile-collector output.

Example (``--prometheus /var/lib/node_exporter/textfile/storagectl.prom``)::

    storagectl_audit_up 1
    storagectl_audit_status 2
    storagectl_findings{severity="critical",code="disk-missing"} 1
    storagectl_instances{source="metadata"} 41
    storagectl_unowned_volumes{where="rbd:vms"} 5230
    storagectl_audit_duration_seconds 0.412
    storagectl_audit_last_success_timestamp_seconds 1795478400

``last_success`` keeps its previous value when an audit could not run (status 3), so
an alert on its age fires when audits stop working.
"""

from __future__ import annotations

import re

from storagectl.fsutil import atomic_write
from storagectl.layouts.audit import AUDIT_SEVERITY, UNKNOWN, AuditReport
from storagectl.layouts.model import SEVERITY

_LAST = re.compile(r"^storagectl_audit_last_success_timestamp_seconds\s+(\S+)\s*$", re.M)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(report: AuditReport, previous_last_success: float | None) -> str:
    ok = report.status != UNKNOWN
    last = report.finished_at if ok else previous_last_success
    lines = [
        "# HELP storagectl_audit_up 1 if the last audit ran completely, 0 if it could not.",
        "# TYPE storagectl_audit_up gauge",
        f"storagectl_audit_up {1 if ok else 0}",
        "# HELP storagectl_audit_status Exit status of the last audit (0 ok, 1 warning, "
        "2 critical, 3 unknown).",
        "# TYPE storagectl_audit_status gauge",
        f"storagectl_audit_status {report.status}",
        "# HELP storagectl_findings Findings of the last audit by severity and code.",
        "# TYPE storagectl_findings gauge",
    ]
    counts: dict[tuple[str, str], int] = {}
    for f in report.findings:
        counts[(f.severity.value, f.code)] = counts.get((f.severity.value, f.code), 0) + 1
    # Every known code is always exported (0 when absent) so alerts see it go back to 0.
    known = {(sev.value, code.value) for code, sev in (*SEVERITY.items(), *AUDIT_SEVERITY.items())}
    for sev, code in sorted(known | set(counts)):
        lines.append(
            f'storagectl_findings{{severity="{_label(sev)}",code="{_label(code)}"}} '
            f"{counts.get((sev, code), 0)}"
        )
    lines += [
        "# HELP storagectl_instances Instances audited by where their layout came from.",
        "# TYPE storagectl_instances gauge",
    ]
    sources = {"metadata": 0, "inferred": 0}
    for inst in report.instances:
        sources[inst.source] = sources.get(inst.source, 0) + 1
    for source, n in sorted(sources.items()):
        lines.append(f'storagectl_instances{{source="{_label(source)}"}} {n}')
    if report.unowned:
        lines += [
            "# HELP storagectl_unowned_volumes Volumes no scanned domain owns that this host "
            "cannot call its own (another host's in a shared pool or path, or orphans).",
            "# TYPE storagectl_unowned_volumes gauge",
        ]
        for where, n in sorted(report.unowned.items()):
            lines.append(f'storagectl_unowned_volumes{{where="{_label(where)}"}} {n}')
    lines += [
        "# HELP storagectl_audit_duration_seconds Wall time of the last audit.",
        "# TYPE storagectl_audit_duration_seconds gauge",
        f"storagectl_audit_duration_seconds {report.duration:.3f}",
    ]
    if last is not None:
        lines += [
            "# HELP storagectl_audit_last_success_timestamp_seconds When the last "
            "complete audit finished (Unix time).",
            "# TYPE storagectl_audit_last_success_timestamp_seconds gauge",
            f"storagectl_audit_last_success_timestamp_seconds {last:.0f}",
        ]
    return "\n".join(lines) + "\n"


def _audit_severities(codes) -> dict:  # noqa: ANN001
    from storagectl.layouts.audit import _SEVERITY

    return {c: _SEVERITY[c] for c in codes}


def previous_success(path: str) -> float | None:
    try:
        with open(path, encoding="utf-8") as handle:
            match = _LAST.search(handle.read(1 << 20))
    except OSError:
        return None
    try:
        return float(match.group(1)) if match else None
    except ValueError:
        return None


def write_textfile(path: str, report: AuditReport) -> None:
    text = render(report, previous_success(path))
    atomic_write(path, text.encode("utf-8"), mode=0o644)
