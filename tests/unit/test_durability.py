"""Issue #19: a copied disk is on stable storage before the journal says "copy done".

Real ``qemu-img`` under ``strace -f -y`` (file descriptors shown with their paths), into
a real file and into a real block device (a loop device stands in for an LV: qemu-img
opens both through ``host_device``/``file`` the same way, and this host has no
device-mapper), driven through the engine's own step loop so that the order of "the
target was flushed" and "the journal says copy:after" is what the engine really does.

The control: the same trace of the command line storagectl used before the fix (no
``-t``) shows no flush at all - the check below would have caught it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from storagectl.backends import Storage
from storagectl.host import fsutil
from storagectl.host.process import Runner
from storagectl.migrate.copy import convert_argv
from storagectl.migrate.engine import Engine, Settings
from storagectl.migrate.journal import Journal
from storagectl.migrate.plan import DiskMove, Options, Plan
from storagectl.model.layout import Backend
from storagectl.model.location import Location, location

UUID = "5e1b0c1e-4b9a-4f7e-8d52-19d0c0a0b019"
MiB = 1 << 20
SIZE = 32 * MiB
TRACED = "openat,pwrite64,pwritev,pwritev2,write,fsync,fdatasync,sync_file_range"


class TracedRunner(Runner):
    """Runs every ``qemu-img`` under strace; each trace is kept for the test to read."""

    def __init__(self, log_dir: Path, events: list[tuple]) -> None:
        super().__init__()
        self.log_dir, self.events, self.traces = log_dir, events, []

    def _wrap(self, argv: tuple[str, ...]) -> tuple[str, ...]:
        if argv[0] != "qemu-img" or argv[1] not in ("convert", "compare"):
            return argv
        log = self.log_dir / f"strace-{len(self.traces)}-{argv[1]}.log"
        self.traces.append((argv, log))
        return ("strace", "-f", "-qq", "-y", "-e", f"trace={TRACED}", "-o", str(log), *argv)

    def stream(self, *argv: str, **kw):  # noqa: ANN003, ANN201
        result = super().stream(*self._wrap(argv), **kw)
        self.events.append(("qemu-img", argv[1], "exited"))
        return result

    def run(self, *argv: str, **kw):  # noqa: ANN003, ANN201
        if argv[:2] == ("qemu-img", "compare"):
            self.events.append(("qemu-img", "compare", "started"))
        return super().run(*self._wrap(argv), **kw)


class BlockStorage(Storage):
    """Storage whose "LV" is a loop device (thick: not known to read as zeros)."""

    def target_is_zero(self, loc: Location) -> bool:
        return False if loc.path and loc.path.startswith("/dev/") else super().target_is_zero(loc)


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / UUID / "disk"
    src.parent.mkdir()
    sh("qemu-img", "create", "-q", "-f", "qcow2", str(src), str(SIZE))
    sh(
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x5a 1M 6M",
        "-c",
        "write -P 0xa5 20M 3M",
        str(src),
    )
    return src


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    backing = tmp_path / "lv.img"
    with open(backing, "wb") as fh:
        fh.write(b"\xee" * SIZE)  # old extents hold whatever was there: not zeros
    dev = sh("losetup", "--find", "--show", str(backing)).strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every fsync (by path) and fadvise in this process, and every journal save, in order."""
    seen: list[tuple] = []
    real_fsync, real_fadvise, real_save = os.fsync, os.posix_fadvise, Journal.save

    def fsync(fd: int) -> None:
        real_fsync(fd)
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        real_fadvise(fd, offset, length, advice)
        if advice == os.POSIX_FADV_DONTNEED:
            seen.append(("dontneed", os.readlink(f"/proc/self/fd/{fd}")))

    def save(self: Journal) -> None:
        real_save(self)
        seen.append(("journal", self.step, self.phase))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    monkeypatch.setattr(Journal, "save", save)
    return seen


def run_copy_and_verify(
    tmp_path: Path, source: Path, dest: Location, *, temp: str | None, events: list[tuple]
) -> TracedRunner:
    """The engine's step loop from "create done" through verify (switch and cleanup are
    another test's business), with the real copy and verify."""
    move = DiskMove("disk", "root", "vda", SIZE, location("qcow2", "qcow2", path=str(source)), dest)
    move.temp_path = temp
    plan = Plan(UUID, "instance-19", "qemu:///system", str(source.parent), Options(to=dest.backend))
    plan.moves = [move]
    runner = TracedRunner(tmp_path, events)
    engine = Engine(Settings("qemu:///system", None, runner, str(tmp_path / "locks")))  # type: ignore[arg-type]
    engine.storage = BlockStorage(runner)
    if dest.kind is not Backend.LVM:
        engine.storage.create(move.copy_dest, SIZE)  # the create step's empty target
    engine._switch = engine._cleanup = lambda j, d: None  # type: ignore[method-assign]
    journal = Journal(plan=plan, original_xml="<domain/>", original_record="")
    journal.done = ["plan", "preflight", "create"]
    engine._steps(journal, None)  # type: ignore[arg-type]
    sh("qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(source), move.copy_dest.path or "")
    return runner


def trace_facts(log: Path, target: str) -> dict:
    """From one strace log: was ``target`` opened O_DIRECT, where is its last write, where
    its first flush after that (line numbers)."""
    lines = log.read_text().splitlines()
    name = re.escape(os.path.realpath(target))
    fd_of = re.compile(rf"\(\d+<{name}>")
    opened = [ln for ln in lines if "openat(" in ln and re.search(rf'"{name}"', ln)]
    writes = [i for i, ln in enumerate(lines) if re.search(r"\bpwrite", ln) and fd_of.search(ln)]
    flushes = [
        i
        for i, ln in enumerate(lines)
        if re.search(r"\b(fsync|fdatasync)\(", ln) and fd_of.search(ln)
    ]
    last_write = max(writes) if writes else None
    return {
        "direct": any("O_DIRECT" in ln for ln in opened),
        "writes": len(writes),
        "flush_after_last_write": any(last_write is not None and f > last_write for f in flushes),
        "flushes": len(flushes),
    }


def check_order(events: list[tuple], target: str) -> None:
    target = os.path.realpath(target)
    copied = events.index(("journal", "copy", "after"))
    exited = events.index(("qemu-img", "convert", "exited"))
    synced = events.index(("fsync", target), exited)
    assert exited < synced < copied, events
    # verify: flushed again and the page cache dropped, then compare reads the device
    compare = events.index(("qemu-img", "compare", "started"))
    dropped = events.index(("dontneed", target), copied)
    assert copied < events.index(("fsync", target), copied) < dropped < compare, events
    assert compare < events.index(("journal", "verify", "after")), events


def test_a_file_copy_is_written_o_direct_and_flushed_before_the_journal_says_copied(
    tmp_path: Path, source: Path, events: list[tuple]
) -> None:
    temp = str(source.parent / "disk.migrating")
    dest = location("flat", "raw", path=str(source.parent / "disk"))
    runner = run_copy_and_verify(tmp_path, source, dest, temp=temp, events=events)
    argv, log = runner.traces[0]
    assert argv[:5] == ("qemu-img", "convert", "-p", "-t", "none")
    facts = trace_facts(log, temp)
    assert facts["direct"] and facts["writes"] > 0 and facts["flush_after_last_write"], facts
    check_order(events, temp)
    # the name the create step made is durable too: the directory was fsynced after the copy
    copied = events.index(("journal", "copy", "after"))
    assert ("fsync", str(source.parent)) in events[:copied]


def test_an_lv_copy_is_written_o_direct_and_flushed_before_the_journal_says_copied(
    tmp_path: Path, source: Path, loop_device: str, events: list[tuple]
) -> None:
    dest = location("lvm", "raw", path=loop_device, volume_group="vg", volume=f"{UUID}_disk")
    runner = run_copy_and_verify(tmp_path, source, dest, temp=None, events=events)
    argv, log = runner.traces[0]
    assert argv[:5] == ("qemu-img", "convert", "-p", "-t", "none")
    assert "--target-is-zero" not in argv  # a thick LV: every zero is written
    facts = trace_facts(log, loop_device)
    assert facts["direct"] and facts["writes"] > 0 and facts["flush_after_last_write"], facts
    check_order(events, loop_device)


def test_the_old_command_line_never_flushes_the_copy(tmp_path: Path, source: Path) -> None:
    """The control for the checks above: storagectl's convert before issue #19 (no -t)
    leaves the copy in the page cache - no O_DIRECT, no flush of the target at all."""
    target = tmp_path / "copy.raw"
    sh("qemu-img", "create", "-q", "-f", "raw", str(target), str(SIZE))
    log = tmp_path / "old.log"
    old = ["qemu-img", "convert", "-p", "-f", "qcow2", "-O", "raw", "-n", "--target-is-zero"]
    sh(
        "strace",
        "-f",
        "-qq",
        "-y",
        "-e",
        f"trace={TRACED}",
        "-o",
        str(log),
        *old,
        str(source),
        str(target),
    )
    facts = trace_facts(log, str(target))
    assert facts == {
        "direct": False,
        "writes": facts["writes"],
        "flush_after_last_write": False,
        "flushes": 0,
    }
    assert facts["writes"] > 0


def test_a_file_system_without_o_direct_gets_writeback_and_still_a_flush(
    tmp_path: Path, source: Path
) -> None:
    """tmpfs gets -t writeback, which also ends in a flush (Nova's fallback): before
    Linux 6.6 it refuses O_DIRECT, since then it takes it, emulated, with no device to
    bypass (memory_backed). /dev/shm is a tmpfs on this machine kind."""
    shm = Path("/dev/shm") / f"storagectl-durability-{os.getpid()}"
    shm.mkdir()
    try:
        target = shm / "disk.migrating"
        sh("qemu-img", "create", "-q", "-f", "raw", str(target), str(SIZE))
        assert fsutil.memory_backed(target)
        expected = "writeback"
        assert _o_direct_refused(target) == (not fsutil.direct_io_supported(target))
        dest = location("flat", "raw", path=str(target))
        move = DiskMove(
            "disk", "root", "vda", SIZE, location("qcow2", "qcow2", path=str(source)), dest
        )
        assert Storage(Runner()).of(dest).cache_mode(dest) == expected
        argv = convert_argv(move, Storage(Runner()), bwlimit=None)
        assert argv[3:5] == ["-t", expected]
        log = tmp_path / "shm.log"
        sh("strace", "-f", "-qq", "-y", "-e", f"trace={TRACED}", "-o", str(log), *argv)
        assert trace_facts(log, str(target))["flush_after_last_write"]
    finally:
        for f in shm.iterdir():
            f.unlink()
        shm.rmdir()


def _o_direct_refused(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        return True
    return False


def test_a_killed_atomic_write_leaves_a_temp_file_the_journal_end_removes(tmp_path) -> None:
    """kill -9 inside atomic_write (one thread of a host conversion killed while another
    wrote) leaves ``.NAME.XXXXXXXX``; removing the journal removes those of the journal,
    the record and disk.info - and nothing else."""
    from storagectl.host.fsutil import remove_stale_temps

    names = [".storage.yaml.ab_12cd3", ".disk.info.zz9_8y7x", ".storage.migration.json.q1w2e3r4"]
    keep = [".storage.yaml.toolong99", "storage.yaml", ".other.abcdefgh", "disk.info.tmp"]
    for name in names + keep:
        (tmp_path / name).write_text("x")
    assert remove_stale_temps(tmp_path / "storage.yaml") == [".storage.yaml.ab_12cd3"]
    assert remove_stale_temps(tmp_path / "nothing-here") == []
    assert remove_stale_temps(tmp_path / "disk.info") == [".disk.info.zz9_8y7x"]
    assert remove_stale_temps(tmp_path / "storage.migration.json") == [
        ".storage.migration.json.q1w2e3r4"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
