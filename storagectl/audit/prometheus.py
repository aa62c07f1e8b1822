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
an alert on its age fires when audits stop working. An audit that could not run at all
(lock, configuration, an unexpected error) still writes the file, with
``storagectl_audit_up 0``, ``storagectl_audit_status 3`` and no findings
(:func:`render_failure`).

The file is replaced atomically (a temp file in its directory, renamed over it). Only a
regular file (or none) is ever replaced: ``--prometheus /dev/full`` or a directory is
refused (:func:`check_textfile`), never turned into a file.
"""

from __future__ import annotations

import os
import re
import stat

from storagectl import errors
from storagectl.audit.audit import UNKNOWN, AuditReport
from storagectl.audit.interrupted import prometheus_lines
from storagectl.host.fsutil import atomic_write
from storagectl.model.layout import Code

_LAST = re.compile(r"^storagectl_audit_last_success_timestamp_seconds\s+(\S+)\s*$", re.M)


class TextfileError(errors.StorageCtlError):
    """The textfile cannot be written: the audit's result cannot reach monitoring."""

    template = "cannot write the Prometheus textfile %(path)s: %(reason)s"
    exit_code = 3  # Nagios UNKNOWN: monitoring does not know the result


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
    known = {(code.severity.value, code.value) for code in Code}
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
    misread = {f.instance for f in report.findings if f.code == Code.NOVA_WOULD_MISREAD}
    lines += [
        "# HELP storagectl_nova_would_misread_instances Instances Nova, with this host's "
        "nova.conf (or the --assume'd one), would open otherwise than they are stored.",
        "# TYPE storagectl_nova_would_misread_instances gauge",
        f"storagectl_nova_would_misread_instances {len(misread)}",
    ]
    lines += prometheus_lines(report.interrupted)  # storagectl/audit/interrupted.py
    held = report.retained.values()  # storagectl/audit/retained.py
    lines += [
        "# HELP storagectl_retained_sources Sources kept by finished migrations "
        "(the records' retained_sources; migrate --delete-retained removes them).",
        "# TYPE storagectl_retained_sources gauge",
        f"storagectl_retained_sources {sum(h['sources'] for h in held)}",
        "# HELP storagectl_retained_sources_bytes Bytes the retained sources that are "
        "files hold (LVs and RBD images are counted, not sized).",
        "# TYPE storagectl_retained_sources_bytes gauge",
        f"storagectl_retained_sources_bytes {sum(h['bytes'] for h in held)}",
    ]
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


def render_failure(previous_last_success: float | None, duration: float = 0.0) -> str:
    """The textfile of an audit that could not run at all: up 0, status 3, no findings
    (the previous run's counts would be stale), the last success kept."""
    lines = [
        "# HELP storagectl_audit_up 1 if the last audit ran completely, 0 if it could not.",
        "# TYPE storagectl_audit_up gauge",
        "storagectl_audit_up 0",
        "# HELP storagectl_audit_status Exit status of the last audit (0 ok, 1 warning, "
        "2 critical, 3 unknown).",
        "# TYPE storagectl_audit_status gauge",
        f"storagectl_audit_status {UNKNOWN}",
        "# HELP storagectl_audit_duration_seconds Wall time of the last audit.",
        "# TYPE storagectl_audit_duration_seconds gauge",
        f"storagectl_audit_duration_seconds {duration:.3f}",
    ]
    if previous_last_success is not None:
        lines += [
            "# HELP storagectl_audit_last_success_timestamp_seconds When the last "
            "complete audit finished (Unix time).",
            "# TYPE storagectl_audit_last_success_timestamp_seconds gauge",
            f"storagectl_audit_last_success_timestamp_seconds {previous_last_success:.0f}",
        ]
    return "\n".join(lines) + "\n"


def check_textfile(path: str) -> None:
    """Refuse, before the audit runs, a textfile path that can never be written or must
    not be replaced: a missing directory, a directory, a device or other non-regular file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        dir_mode = os.stat(directory).st_mode
    except OSError as exc:
        raise TextfileError(path=path, reason=f"directory {directory}: {exc.strerror}") from exc
    if not stat.S_ISDIR(dir_mode):
        raise TextfileError(path=path, reason=f"{directory} is not a directory")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TextfileError(path=path, reason=exc.strerror or str(exc)) from exc
    if stat.S_ISDIR(mode):
        raise TextfileError(path=path, reason="it is a directory")
    if not stat.S_ISREG(mode):
        raise TextfileError(path=path, reason="it is not a regular file (only one is replaced)")


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


def write_textfile(path: str, report: AuditReport | None, *, duration: float = 0.0) -> None:
    """Write the textfile of ``report``, or of an audit that could not run (None).

    Raises :class:`TextfileError` (exit status 3) naming the file and why."""
    check_textfile(path)
    previous = previous_success(path)
    text = render(report, previous) if report is not None else render_failure(previous, duration)
    try:
        atomic_write(path, text.encode("utf-8"), mode=0o644)
    except OSError as exc:
        raise TextfileError(path=path, reason=exc.strerror or str(exc)) from exc
