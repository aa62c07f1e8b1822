"""Human-readable rendering of layouts and findings (rich tables; plain when piped)."""

from __future__ import annotations

from collections.abc import Iterable

from rich import box
from rich.console import Console
from rich.table import Table

from storagectl.layouts.model import Finding, InstanceLayout

_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


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


def layouts_table(console: Console, instances: Iterable[InstanceLayout]) -> None:
    """One row per disk, grouped by instance; findings listed under their instance."""
    plain = not console.is_terminal
    table = Table(box=None if plain else box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("INSTANCE", "HOST", "STATE", "SRC", "DISK", "ROLE", "TARGET", "BACKEND",
                "FORMAT", "LOCATION", "VSIZE", "ALLOC", "BACKING"):
        table.add_column(col, no_wrap=col in ("INSTANCE", "LOCATION") and not plain)
    for inst in instances:
        first = True
        style = _SEVERITY_STYLE.get(inst.worst.value) if inst.worst else None
        for disk in inst.disks or [None]:
            head = [inst.uuid, inst.host, inst.state, inst.source] if first else [""] * 4
            if disk is None:
                table.add_row(*head, *(["-"] * 9), style=style)
            else:
                table.add_row(
                    *head, disk.name, disk.role.value, disk.target or "-", disk.backend.value,
                    disk.format or "-", disk.location, human_size(disk.virtual_size),
                    human_size(disk.allocated_size),
                    disk.backing.path if disk.backing else "-",
                )
            first = False
        table.add_section()
    console.print(table)
    findings = [f for inst in instances for f in inst.findings]
    if findings:
        console.print()
        findings_table(console, findings)


def findings_table(console: Console, findings: Iterable[Finding]) -> None:
    plain = not console.is_terminal
    table = Table(box=None if plain else box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("SEVERITY", "CODE", "INSTANCE", "DISK", "MESSAGE"):
        table.add_column(col, overflow="fold")
    for f in sorted(findings, key=lambda f: (-f.severity.rank, f.instance or "", f.disk or "")):
        table.add_row(f.severity.value, f.code, f.instance or "-", f.disk or "-", f.message,
                      style=_SEVERITY_STYLE.get(f.severity.value))
    console.print(table)
