"""storagectl fleet: the audits of many compute hosts as one report.

The merging is storagectl/fleet/report.py; this module draws it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import click

from storagectl.cli.app import Application, output_option
from storagectl.cli.render import human_size
from storagectl.fleet.report import STATUS_NAMES, FleetReport, fleet_report

_STATUS_STYLE = {3: "magenta", 2: "bold red", 1: "yellow"}
HOST_COLUMNS = (
    "STATUS",
    "HOST",
    "CRITICAL",
    "WARNING",
    "INFO",
    "INSTANCES",
    "UNRECORDED",
    "RETAINED",
    "INTERRUPTED",
    "PROBLEM",
)


@click.group("fleet")
def fleet_group() -> None:
    """Many compute hosts at once (their audits gathered by e.g. Ansible).

    Exit statuses are Nagios's: any failure to run exits 3 (UNKNOWN).
    """


@fleet_group.command("report")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@output_option("table", "json", "yaml", aliases={"text": "table"})
@click.pass_obj
def report_cmd(app: Application, paths: tuple[str, ...], fmt: str) -> None:
    """Merge the audits of many hosts into one report, worst hosts first.

    Each PATH is a file or a directory whose *.json files are read (hidden ones left
    out). A file holds the output of `storagectl audit -o json` of one host, named by
    its "host" key if it has one, else by the file's name (cn-17.json: cn-17); or, for a
    host whose audit could not run, {"host": NAME, "failed": true, "status": 3,
    "msg": "..."}. A file that is neither (not JSON, another shape, over 64 MiB,
    unreadable) makes its host UNKNOWN, naming the file. -o json gives every finding
    with its host.

    Exit status (Nagios): the worst host's - 0 every host ok, 1 warnings, 2 any
    critical, 3 any host could not be audited or its file is bad; 3 also for a usage
    error (a PATH that does not exist, a directory without *.json files).
    """
    report = fleet_report(paths)
    if fmt == "table":
        _print(app, report)
    else:
        app.print_data(report.to_dict(), fmt)
    raise click.exceptions.Exit(report.status)


def _cell(value: object) -> str:
    """Text from an input file as one printable line (no terminal escapes)."""
    text = "-" if value is None else str(value)
    return "".join(c if c.isprintable() else "?" for c in text)


def _size(value: int | None) -> str:
    return human_size(value) if value is not None else "-"


def _interrupted(held: Mapping[str, int] | None) -> str:
    """``-`` (the file does not say), ``0``, or ``2 (1.5G)``: migrations and their bytes."""
    if not held:
        return "-" if held is None else "0"
    return f"{len(held)} ({human_size(sum(held.values()))})"


def _print(app: Application, report: FleetReport) -> None:
    from storagectl.cli.render import emit_table  # rich: only when drawn

    rows: list[tuple[Sequence[str], str | None]] = []
    for h in report.hosts:
        rows.append(
            (
                [
                    STATUS_NAMES[h.status],
                    _cell(h.host),
                    str(h.count("critical")),
                    str(h.count("warning")),
                    str(h.count("info")),
                    _cell(h.instances),
                    _cell(h.unrecorded),
                    _size(h.retained_bytes),
                    _interrupted(h.interrupted),
                    _cell(h.problem),
                ],
                _STATUS_STYLE.get(h.status),
            )
        )
    emit_table(app.console, HOST_COLUMNS, rows)
    codes = report.by_code()
    if codes:
        click.echo()
        emit_table(
            app.console,
            ("CODE", "TOTAL", "HOSTS"),
            [
                (
                    [
                        code,
                        str(entry["total"]),
                        " ".join(f"{_cell(host)}:{n}" for host, n in entry["hosts"].items()),
                    ],
                    None,
                )
                for code, entry in codes.items()
            ],
        )
    critical = [f for f in report.findings if f["severity"] == "critical"]
    if critical:
        click.echo()
        emit_table(
            app.console,
            ("HOST", "CODE", "INSTANCE", "DISK", "MESSAGE"),
            [
                ([_cell(f.get(k)) for k in ("host", "code", "instance", "disk", "message")], None)
                for f in critical
            ],
        )
    s = report.summary()
    by = s["hosts_by_status"]
    sev = s["findings_by_severity"]
    click.echo(
        f"fleet: {s['hosts']} hosts ({', '.join(f'{by[n]} {n}' for n in STATUS_NAMES)}), "
        f"{sev['critical']} critical, {sev['warning']} warning, {sev['info']} info; "
        f"{s['unrecorded_instances']} of {s['instances']} instances without a record; "
        f"retained sources {human_size(s['retained_bytes'])}, interrupted migrations "
        f"{s['interrupted_migrations']} ({human_size(s['interrupted_bytes'])}) "
        f"-> status {report.status}"
    )
