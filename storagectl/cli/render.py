"""Human-readable rendering of layouts and findings.

On a terminal: rich tables with colours. Piped: plain, aligned, never truncated text, so
``storagectl inspect | grep`` sees every full path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import click
from rich import box
from rich.console import Console
from rich.table import Table

from storagectl.layouts.model import Finding, InstanceLayout

_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
LAYOUT_COLUMNS = (
    "INSTANCE",
    "HOST",
    "STATE",
    "SRC",
    "DISK",
    "ROLE",
    "TARGET",
    "BACKEND",
    "FORMAT",
    "LOCATION",
    "VSIZE",
    "ALLOC",
    "BACKING",
)
FINDING_COLUMNS = ("SEVERITY", "CODE", "INSTANCE", "DISK", "MESSAGE")


def human_size(n: int | None) -> str:
    """1536 -> '1.5K'; None -> '-'."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("", "K", "M", "G", "T", "P"):
        if abs(value) < 1024 or unit == "P":
            return f"{value:.0f}{unit}" if unit == "" else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)


def emit_table(
    console: Console, headers: Sequence[str], rows: Sequence[tuple[Sequence[str], str | None]]
) -> None:
    """rows: (cells, rich style or None). A row of no cells is a section break."""
    if not console.is_terminal:
        data = [list(headers)] + [list(cells) for cells, _ in rows if cells]
        widths = [max(len(r[i]) for r in data) for i in range(len(headers))]
        for r in data:
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in headers:
        table.add_column(col, overflow="fold")
    for cells, style in rows:
        if cells:
            table.add_row(*cells, style=style)
        else:
            table.add_section()
    console.print(table)


def layouts_table(console: Console, instances: Iterable[InstanceLayout]) -> None:
    """One row per disk, grouped by instance; findings listed after the table."""
    instances = list(instances)
    rows: list[tuple[Sequence[str], str | None]] = []
    for inst in instances:
        style = _SEVERITY_STYLE.get(inst.worst.value) if inst.worst else None
        head = [inst.uuid, inst.host, inst.state, inst.source]
        for disk in inst.disks:
            rows.append(
                (
                    [
                        *head,
                        disk.name,
                        disk.role.value,
                        disk.target or "-",
                        disk.backend.value,
                        disk.format or "-",
                        disk.location,
                        human_size(disk.virtual_size),
                        human_size(disk.allocated_size),
                        disk.backing.path if disk.backing else "-",
                    ],
                    style,
                )
            )
            head = [""] * 4
        if not inst.disks:
            rows.append(([*head, *(["-"] * 9)], style))
        rows.append(((), None))
    emit_table(console, LAYOUT_COLUMNS, rows)
    findings = [f for inst in instances for f in inst.findings]
    if findings:
        click.echo()
        findings_table(console, findings)


def findings_table(console: Console, findings: Iterable[Finding]) -> None:
    ordered = sorted(findings, key=lambda f: (-f.severity.rank, f.instance or "", f.disk or ""))
    emit_table(
        console,
        FINDING_COLUMNS,
        [
            (
                (f.severity.value, f.code, f.instance or "-", f.disk or "-", f.message),
                _SEVERITY_STYLE.get(f.severity.value),
            )
            for f in ordered
        ],
    )
