"""storagectl audit: the cron job - drift, orphans and unsafe images, with exit codes.

Every way the audit can fail to audit - the lock, the configuration, the textfile, a usage
error, an unexpected exception - exits 3 (Nagios UNKNOWN), never 1 or 2 (which mean
findings), and the ``--prometheus`` textfile then says ``storagectl_audit_up 0``.
"""

from __future__ import annotations

import logging
import time

import click

from storagectl import errors
from storagectl.audit.audit import OK, UNKNOWN, AuditReport, run_audit
from storagectl.audit.prometheus import TextfileError, check_textfile, write_textfile
from storagectl.cli.app import Application, assume_option, output_option
from storagectl.cli.render import error_line
from storagectl.host.locks import host_lock

LOG = logging.getLogger("storagectl")


class AuditCommand(click.Command):
    """A usage error of audit is an UNKNOWN to Nagios (3), not a CRITICAL (click's 2)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            exc.exit_code = UNKNOWN
            raise


@click.command("audit", cls=AuditCommand)
@output_option("table", "json", "yaml", aliases={"text": "table"})
@assume_option
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
    help="Also write a node_exporter textfile-collector file (atomically; with "
    "storagectl_audit_up 0 when the audit could not run).",
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
    2 any critical, 3 could not audit (host unreachable, configuration or instances_path
    unreadable, lock directory or --prometheus file unusable, another audit running,
    usage error, unexpected error).
    """
    started = time.monotonic()
    try:
        if prom:
            check_textfile(prom)
        with host_lock(app.lock_path, "audit"):
            report = run_audit(
                app.uris, app.nova, app.runner, complete=complete, lock_path=app.lock_path
            )
            textfile_error = None
            if prom:
                try:
                    write_textfile(prom, report)
                except TextfileError as exc:
                    textfile_error = exc
    except TextfileError:
        raise  # the textfile itself is unusable: nothing more can be written to it
    except Exception as exc:  # noqa: BLE001 - whatever it is, the audit did not run
        failure = _failure(app, exc)
        if prom:
            try:
                write_textfile(prom, None, duration=time.monotonic() - started)
            except TextfileError as also:  # told in the same one line
                reason = failure.fields.get("reason") or str(failure)
                failure = AuditFailed(reason=f"{reason}; and {also}")
        raise failure from exc
    _print(app, report, fmt, quiet)
    if textfile_error is not None:
        raise textfile_error
    raise click.exceptions.Exit(report.status)


def _failure(app: Application, exc: Exception) -> errors.StorageCtlError:
    if isinstance(exc, errors.LockBusy):
        return AuditBusy(path=exc.fields.get("path", app.lock_path))
    if isinstance(exc, errors.StorageCtlError):
        return AuditFailed(reason=str(exc))
    LOG.debug("audit failed", exc_info=True)  # the traceback goes to the log file only
    where = app.log_file or "the log (use --log-file)"
    return AuditFailed(
        reason=f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())} "
        f"(traceback in {where})"
    )


def _print(app: Application, report: AuditReport, fmt: str, quiet: bool) -> None:
    if quiet and report.status == OK:
        return
    if fmt != "table":
        app.print_data(report.to_dict(), fmt)
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
        app.info(error_line(f"AuditIncomplete: {line}"))


class AuditBusy(errors.StorageCtlError):
    template = "another storagectl audit is running on this host (lock %(path)s)"
    exit_code = UNKNOWN


class AuditFailed(errors.StorageCtlError):
    template = "cannot audit: %(reason)s"
    exit_code = UNKNOWN
