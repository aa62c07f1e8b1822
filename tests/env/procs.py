"""Processes as /proc shows them, for tests that look for (or after) a child."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid``; empty if it is gone (or a kernel thread)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (pid 1 here may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes() -> Iterator[tuple[int, list[str]]]:
    """``(pid, argv)`` of every process with a command line."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (argv := cmdline(int(entry.name))):
            yield int(entry.name), argv
