"""The copy step: ``qemu-img convert`` per disk, with progress, a rate limit and threads.

Every copy writes into a target that the create step made, so the command is always::

    qemu-img convert -p -f qcow2 -O raw -n --target-is-zero [-r 50M] SRC TARGET
        (0.00/100%)\r    (1.01/100%)\r ... (100.00/100%)\r

``-n`` keeps the target qemu-img did not create (an LV, an RBD image, or the file with the
format and size we chose); ``--target-is-zero`` (only for targets that read as zeros:
new files, RBD images and thin LVs, see :meth:`Storage.target_is_zero`) lets qemu-img
skip zero areas, so a sparse 20 GiB disk holding 1 GiB of data costs 1 GiB of I/O - and,
for Nova's sparse LVs, 1 GiB of the thin pool: written zeros would provision all of it
and can run the pool out of space. A thick LV gets every zero written: its extents hold
whatever was there before. Progress lines go to a :class:`Progress` sink.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from storagectl.migrate.plan import DiskMove
from storagectl.migrate.targets import Storage
from storagectl.process import Runner

LOG = logging.getLogger(__name__)

_PERCENT = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")
#: A copy writing nothing for this long is considered hung (seconds).
COPY_TIMEOUT = 24 * 3600


class Progress(Protocol):
    """Where copy progress goes: rich bars on a terminal, plain lines otherwise."""

    def start(self, disk: str, total: int) -> None: ...
    def update(self, disk: str, percent: float) -> None: ...
    def finish(self, disk: str, ok: bool) -> None: ...


class NullProgress:
    def start(self, disk: str, total: int) -> None:
        pass

    def update(self, disk: str, percent: float) -> None:
        pass

    def finish(self, disk: str, ok: bool) -> None:
        pass


def parse_percent(line: str) -> float | None:
    """The percentage in one qemu-img ``-p`` line.

    >>> parse_percent("    (42.51/100%)")
    42.51
    """
    match = _PERCENT.search(line)
    return float(match.group(1)) if match else None


def convert_argv(move: DiskMove, storage: Storage, *, bwlimit: int | None) -> list[str]:
    """The ``qemu-img convert`` command line for one move (explicit formats, ``-n``)."""
    src = storage.qemu_spec(move.source)
    dst_loc = move.copy_dest
    dst = storage.qemu_spec(dst_loc)
    argv = ["qemu-img", "convert", "-p", "-f", src.format, "-O", dst.format, "-n"]
    if storage.target_is_zero(dst_loc):
        argv.append("--target-is-zero")
    if bwlimit:
        argv += ["-r", f"{bwlimit}M"]
    return [*argv, src.filename, dst.filename]


def copy_disk(
    move: DiskMove, storage: Storage, runner: Runner, progress: Progress, *, bwlimit: int | None
) -> None:
    """Copy one disk; raises the runner's CommandFailed/CommandTimeout on failure."""
    argv = convert_argv(move, storage, bwlimit=bwlimit)
    progress.start(move.name, move.virtual_size)
    ok = False
    try:
        runner.stream(
            *argv, on_line=lambda line: _on_line(move.name, line, progress), timeout=COPY_TIMEOUT
        )
        ok = True
    finally:
        progress.finish(move.name, ok)


def copy_all(
    moves: Sequence[DiskMove],
    storage: Storage,
    runner: Runner,
    progress: Progress,
    *,
    parallel: int,
    bwlimit: int | None,
) -> None:
    """Copy every move, ``parallel`` at a time; the first failure is raised once all
    copies that were started have ended (none is left running behind our back)."""

    def run(move: DiskMove) -> None:
        copy_disk(move, storage, runner, progress, bwlimit=bwlimit)

    if parallel <= 1 or len(moves) <= 1:
        for move in moves:
            run(move)
        return
    with ThreadPoolExecutor(max_workers=min(parallel, len(moves))) as pool:
        futures = [pool.submit(run, m) for m in moves]
    for future in futures:
        future.result()


def _on_line(disk: str, line: str, progress: Progress) -> None:
    percent = parse_percent(line)
    if percent is not None:
        progress.update(disk, percent)
    else:
        LOG.debug("qemu-img convert (%s): %s", disk, line.strip())
