"""Human-readable rendering of layouts, findings and errors.

On a terminal: rich tables with colours. Piped: plain, aligned, never truncated text, so
``storagectl inspect | grep`` sees every full path.

Every error shown to the operator is one line, ``--> ClassName: message``
(:func:`error_line`). rich is imported only when a table is drawn: the error renderer
(``storagectl.cli``) imports this module on every run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import click

from storagectl.model.layout import Finding, InstanceLayout

if TYPE_CHECKING:
    from rich.console import Console

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
    "NOVA",
    "VSIZE",
    "ALLOC",
    "BACKING",
)
FINDING_COLUMNS = ("SEVERITY", "CODE", "INSTANCE", "DISK", "MESSAGE")


def error_line(error: str | BaseException) -> str:
    """The one line an error takes on stderr: ``--> ClassName: message`` for an
    exception, ``--> message`` for a message that already names its class."""
    if isinstance(error, BaseException):
        error = f"{type(error).__name__}: {error}"
    return f"--> {error}"


def print_error(error: str | BaseException) -> None:
    """:func:`error_line` on stderr, red on a terminal."""
    click.secho(error_line(error), fg="red", err=True)


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


#: Columns of free text: folded (at spaces first) to fit the terminal. Every other column
#: - uuids, paths, names - is never wrapped, so a copy-paste of it works.
FOLDABLE = ("MESSAGE", "DETAIL", "ERROR", "PROBLEM")
#: Layout columns left out, in this order, when the table would not fit the terminal.
LAYOUT_DROP = (
    "ALLOC", "VSIZE", "SRC", "STATE", "HOST", "TARGET", "FORMAT", "ROLE", "BACKING", "NOVA"
)  # fmt: skip
#: A folded column is never made narrower than this (nor than its longest word, if room).
_FOLD_MIN = 24
#: Between two columns: a space of padding on each side and the (blank) rule.
_GAP = 3


def emit_table(
    console: Console,
    headers: Sequence[str],
    rows: Sequence[tuple[Sequence[str], str | None]],
    *,
    drop: Sequence[str] = (),
) -> None:
    """rows: (cells, rich style or None). A row of no cells is a section break.

    Piped: plain aligned text, nothing cut. On a terminal: a table whose uuids and paths
    are never wrapped; the free-text columns (:data:`FOLDABLE`) are folded instead, and
    when that is not enough the ``drop`` columns are left out in order (said on stderr).
    A table that still does not fit is drawn at its full width for the terminal to wrap
    its lines: each cell stays one unbroken string.
    """
    if not console.is_terminal:
        data = [list(headers)] + [list(cells) for cells, _ in rows if cells]
        widths = [max(len(r[i]) for r in data) for i in range(len(headers))]
        for r in data:
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        return
    cells = [list(c) for c, _ in rows if c]
    natural = {h: max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)}
    least = dict(natural)

    def needed(cols: list[str]) -> int:
        # the folded columns as narrow as they may be: their longest word if there is
        # room for it (a path inside a message stays whole too), else _FOLD_MIN
        fixed = sum(natural[h] for h in cols if h not in FOLDABLE) + _GAP * (len(cols) - 1)
        folded = [h for h in cols if h in FOLDABLE]
        room = (console.width - fixed) // max(1, len(folded))
        for h in folded:
            word = _longest_word(cells, headers.index(h))
            least[h] = min(natural[h], max(_FOLD_MIN, min(word, room)))
        return fixed + sum(least[h] for h in folded)

    shown = list(headers)
    dropped = []
    for name in drop:
        if needed(shown) <= console.width:
            break
        if name in shown:
            shown.remove(name)
            dropped.append(name)
    total = needed(shown)  # (also sets least[] for the columns shown)
    from rich import box
    from rich.table import Table

    keep = [headers.index(h) for h in shown]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for h in shown:
        if h in FOLDABLE:
            table.add_column(h, overflow="fold", min_width=least[h])
        else:
            table.add_column(h, no_wrap=True, overflow="ignore", min_width=natural[h])
    for row, style in rows:
        if row:
            table.add_row(*[row[i] for i in keep], style=style)
        else:
            table.add_section()
    if total <= console.width:
        console.print(table)
    else:  # drawn at full width (rich would squeeze it to the terminal's)
        width = console.width
        console.width = total
        try:
            console.print(table, crop=False)
        finally:
            console.width = width
    if dropped:
        click.echo(
            f"(columns {', '.join(dropped)} left out to fit the terminal; "
            "-o json, -o yaml or a pipe show everything)",
            err=True,
        )


def _longest_word(cells: list[list[str]], i: int) -> int:
    return max((len(w) for c in cells for w in c[i].split()), default=0)


def _nova_cell(disk: Any) -> str:
    """What Nova would open for the disk: ``ok`` as stored, ``MISREAD`` (the finding
    says how), ``-`` for a disk Nova does not rebuild from nova.conf (a volume)."""
    if disk.nova is None:
        return "-"
    return "ok" if disk.nova.matches else "MISREAD"


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
                        _nova_cell(disk),
                        human_size(disk.virtual_size),
                        human_size(disk.allocated_size),
                        disk.backing.path if disk.backing else "-",
                    ],
                    style,
                )
            )
            head = [""] * 4
        if not inst.disks:
            rows.append(([*head, *(["-"] * 10)], style))
        rows.append(((), None))
    emit_table(console, LAYOUT_COLUMNS, rows, drop=LAYOUT_DROP)
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
