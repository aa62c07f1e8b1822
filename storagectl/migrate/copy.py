"""The copy step: ``qemu-img convert`` per disk, with progress, a rate limit and threads.

Every copy writes into a target that the create step made, so the command is always::

    qemu-img convert -p -t none -f qcow2 -O raw -n --target-is-zero [-r 50M] SRC TARGET
        (0.00/100%)\r    (1.01/100%)\r ... (100.00/100%)\r

``-n`` keeps the target qemu-img did not create (an LV, an RBD image, or the file with the
format and size we chose); ``--target-is-zero`` (only for targets that read as zeros:
new files, RBD images and thin LVs, see :meth:`Storage.target_is_zero`) lets qemu-img
skip zero areas, so a sparse 20 GiB disk holding 1 GiB of data costs 1 GiB of I/O - and,
for Nova's sparse LVs, 1 GiB of the thin pool: written zeros would provision all of it
and can run the pool out of space. A thick LV gets every zero written: its extents hold
whatever was there before. Progress lines go to a :class:`Progress` sink.

Durability: the engine journals "copy done" when :func:`copy_disk` returns, and every
later step (verify, the switch that retires the source) relies on the copy being on
stable storage by then, across a power cut, not only across kill -9. Without ``-t``
qemu-img 7.2 writes through the page cache and never flushes (strace: no fsync), so
the copy may still be dirty pages when the switch is journaled. Hence (as Nova's
``images.convert_image``):

* ``-t none`` (O_DIRECT writes, then one ``fdatasync``) for files and LVs; where the
  file system refuses O_DIRECT (:func:`~storagectl.host.fsutil.direct_io_supported`),
  ``-t writeback`` (buffered writes, then one ``fdatasync``). ``none`` over
  ``writeback`` by measurement (256 MiB, 3 runs: writeback 0.18-0.22 s, none 0.20-0.23 s;
  bench/RESULTS.md for 2 GiB): the same wall time here, and a copy
  of a large disk does not fill a busy compute host's page cache with dirty pages
  that the final flush then has to write in one stall;
* then an explicit ``fsync`` of a file or LV target and of a file target's directory
  (``DiskBackend.make_durable``): it makes the guarantee independent of qemu-img's own flush
  (a different version, the skipped flush of ``--target-is-zero`` with nothing
  written), commits a file's metadata (size, owner) and the name that the create step
  made; after ``-t none`` it costs one cache flush and writes nothing;
* RBD: ``-t none`` turns librbd's client write-back cache off, so every write is
  acknowledged only after all OSDs of its placement group persisted it (journal/WAL);
  the final flush (``rbd_aio_flush``) is then free. A completed RBD copy is durable.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from storagectl.backends import Storage
from storagectl.host.process import Runner
from storagectl.migrate.plan import DiskMove

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
    """The ``qemu-img convert`` command line for one move (explicit formats, ``-n``,
    the backend's ``cache_mode``)."""
    src = storage.qemu_spec(move.source)
    dst_loc = move.copy_dest
    dst = storage.qemu_spec(dst_loc)
    argv = ["qemu-img", "convert", "-p", "-t", storage.of(dst_loc).cache_mode(dst_loc)]
    argv += ["-f", src.format, "-O", dst.format, "-n"]
    if storage.target_is_zero(dst_loc):
        argv.append("--target-is-zero")
    if bwlimit:
        argv += ["-r", f"{bwlimit}M"]
    # Every file qemu-img will read is vetted again now (storagectl.inspect.verify).
    return [*argv, storage.read_name(move.source), dst.filename]


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
        storage.of(move.copy_dest).make_durable(move.copy_dest)
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
