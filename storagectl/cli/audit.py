"""storagectl audit: the cron job - drift, orphans and unsafe images, with exit codes."""

from __future__ import annotations

import click

from storagectl import errors
from storagectl.cli.app import Application, output_option
from storagectl.layouts.audit import OK, UNKNOWN, AuditReport, run_audit
from storagectl.layouts.locks import host_lock
from storagectl.layouts.prometheus import write_textfile


@click.command("audit")
@output_option("text", "json")
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Print nothing when there is nothing at warning or above (for cron).",
)
@click.option(
    "--prometheus",
    "prom",
    metavar="FILE",
    help="Also write a node_exporter textfile-collector file (atomically).",
)
@click.option(
    "--complete",
    is_flag=True,
    help="The hosts given with -c are ALL the compute hosts using these Ceph pools and "
    "instances_path: report every volume none of their domains owns as an orphan. "
    "Without it, volumes of a shared pool that this host has no trace of are only "
    "counted (unowned-volumes, info).",
)
@click.pass_obj
def audit_cmd(app: Application, fmt: str, quiet: bool, prom: str | None, complete: bool) -> None:
    """Check every instance, record, volume and image-cache entry on the host.

    Read-only. Exit status (Nagios): 0 nothing at warning or above, 1 warnings,
    2 any critical, 3 could not audit (host unreachable, config unreadable, another
    audit running).
    """
    try:
        with host_lock(app.lock_path, "audit"):
            report = run_audit(app.uris, app.nova, app.runner, complete=complete)
            if prom:
                write_textfile(prom, report)
    except errors.LockBusy as exc:
        raise AuditBusy(path=exc.fields.get("path", app.lock_path)) from exc
    except errors.ConfigError as exc:
        raise AuditFailed(reason=str(exc)) from exc
    _print(app, report, fmt, quiet)
    raise click.exceptions.Exit(report.status)


def _print(app: Application, report: AuditReport, fmt: str, quiet: bool) -> None:
    if quiet and report.status == OK:
        return
    if fmt == "json":
        app.print_data(report.to_dict(), "json")
        return
    shown = [f for f in report.findings if not quiet or f.severity.rank > 0]
    if shown:
        from storagectl.cli.render import findings_table  # rich: only when drawn

        findings_table(app.console, shown)
    s = report.summary()
    sev = s["findings_by_severity"]
    click.echo(
        f"audit: {s['instances']} instances ({s['instances_by_source']['metadata']} "
        f"recorded), {sev['critical']} critical, {sev['warning']} warning, "
        f"{sev['info']} info in {s['duration_seconds']:.2f}s -> status {report.status}"
    )
    for line in report.errors:
        app.info(f"--> AuditIncomplete: {line}")


class AuditBusy(errors.StorageCtlError):
    template = "another storagectl audit is running on this host (lock %(path)s)"
    exit_code = UNKNOWN


class AuditFailed(errors.StorageCtlError):
    template = "cannot audit: %(reason)s"
    exit_code = UNKNOWN
