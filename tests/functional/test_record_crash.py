"""storage.yaml under real crashes and real concurrency.

A writer process is SIGKILLed at random moments while it rewrites a large record in a
loop; after every kill the file must parse and be exactly the last record the writer
finished or the one it was writing - never a mix, never partial. The writer's disk is
made slow (short writes, slow fsync) so that a good share of the kills land inside the
file operations rather than in YAML encoding; the kills themselves are real SIGKILLs.
Then two processes write under the instance lock while the test reads: every read sees
a whole record, and the lock's critical sections never overlap.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest

from storagectl.host.locks import instance_lock
from storagectl.model.layout import Backend, Backing, DiskLayout, InstanceLayout, Role
from storagectl.record import record as rec

U = "5eed0001-0000-4000-8000-00000000c0de"
NOW = "2026-11-23T23:59:01Z"
N_DISKS = 100  # about 30 KiB of YAML, written in 4 KiB pieces by the slowed writer
KILLS = 30
# fork, not spawn: the child starts in milliseconds with everything imported, so the
# random kill delay falls inside its writes, not inside interpreter start-up.
FORK = multiprocessing.get_context("fork")


def big_record(gen: int) -> rec.Record:
    """Generation ``gen``: every disk's size and the instance name carry the number."""
    base = f"/var/lib/nova/instances/{U}"
    disks = [
        DiskLayout(
            f"disk.eph{i}",
            Role.EPHEMERAL,
            f"vd{i}",
            Backend.QCOW2,
            "qcow2",
            path=f"{base}/disk.eph{i}",
            virtual_size=gen * 1_000_000 + i,
            backing=Backing(f"/var/lib/nova/instances/_base/ephemeral_{i}_0706d66", "raw"),
        )
        for i in range(N_DISKS)
    ]
    layout = InstanceLayout(U, f"gen-{gen}", "cn7", "running", "inferred", disks)
    return rec.record_from_layout(layout, evidence=["domain-xml", "nova.conf"], now=NOW)


def generation(record: rec.Record) -> int:
    """The generation of a record read back, after checking it is that generation whole."""
    gen = int(record.name.removeprefix("gen-"))
    sizes = [d.virtual_size for d in record.disks]
    assert sizes == [gen * 1_000_000 + i for i in range(N_DISKS)], f"generation {gen} mixed"
    return gen


def _slow_disk() -> None:
    """Slow this (forked) process's disk: at most 4 KiB per write, 40 ms per fsync."""
    real_write, real_fsync = os.write, os.fsync

    def write(fd: int, data: bytes) -> int:
        time.sleep(0.003)
        return real_write(fd, data[:4096])

    def fsync(fd: int) -> None:
        time.sleep(0.04)
        real_fsync(fd)

    os.write, os.fsync = write, fsync


def _write_forever(inst_dir: Path, start: int, report_fd: int) -> None:
    _slow_disk()
    gen = start
    while True:
        rec.write_record(inst_dir, big_record(gen))
        os.write(report_fd, f"{gen}\n".encode())  # in the pipe before the next write starts
        gen += 1


def _drain(fd: int) -> list[int]:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return [int(line) for line in data.split()]


@pytest.fixture
def inst_dir(tmp_path: Path) -> Path:
    d = tmp_path / "instances" / U
    d.mkdir(parents=True)
    return d


def test_sigkill_during_writes_leaves_the_old_or_the_new_record(inst_dir):
    rng = random.Random(20261123)
    rec.write_record(inst_dir, big_record(0))
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    current, finished, mid_write, cycle = 0, 0, 0, None
    temps: set[str] = set()  # temp files left by kills between creation and rename
    try:
        for _ in range(KILLS):
            writer = FORK.Process(target=_write_forever, args=(inst_dir, current + 1, write_fd))
            writer.start()
            # The first run measures how long one write cycle takes; later kills fall
            # anywhere within 1.3 cycles.
            time.sleep(1.0 if cycle is None else rng.uniform(0, 1.3 * cycle))
            os.kill(writer.pid, signal.SIGKILL)
            writer.join()
            assert writer.exitcode == -signal.SIGKILL
            done = _drain(read_fd)
            cycle = cycle or 1.0 / max(1, len(done))
            last_done = done[-1] if done else current
            on_disk = rec.read_record(inst_dir, expect_uuid=U)
            assert on_disk is not None
            gen = generation(on_disk)
            # The finished one, or the one being written if its rename got through.
            assert gen in (last_done, last_done + 1), (gen, last_done)
            finished += len(done)
            mid_write += gen == last_done + 1
            temps.update(n for n in os.listdir(inst_dir) if n.startswith(rec.TEMP_PREFIX))
            current = gen
    finally:
        os.close(read_fd)
        os.close(write_fd)
    print(
        f"{KILLS} kills, cycle {cycle:.3f}s, {finished} writes finished, {len(temps)} kills "
        f"left a temp file, {mid_write} came after a rename but before its report"
    )
    # Not vacuous: writes did complete between kills, and kills did hit mid-write.
    assert finished >= 3, "the writer hardly ever finished a write: kills too early"
    assert temps, "no kill landed between temp file creation and rename"
    rec.write_record(inst_dir, big_record(current + 1))  # removes what dead writers left
    assert sorted(os.listdir(inst_dir)) == ["storage.yaml"]
    assert generation(rec.read_record(inst_dir, expect_uuid=U)) == current + 1


def _locked_writer(inst_dir: Path, lock_dir: str, wid: int, count: int, log: Path) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for k in range(count):
        record = big_record(wid * 1000 + k)
        with instance_lock(lock_dir, U, wait=60):
            os.write(fd, f"start {wid}\n".encode())
            rec.write_record(inst_dir, record)
            os.write(fd, f"end {wid}\n".encode())


def test_two_writers_under_the_instance_lock(inst_dir, tmp_path):
    lock_dir, log, count = str(tmp_path / "locks"), tmp_path / "critical.log", 3
    writers = [
        FORK.Process(target=_locked_writer, args=(inst_dir, lock_dir, wid, count, log))
        for wid in (1, 2)
    ]
    for writer in writers:
        writer.start()
    reads = set()
    while any(w.is_alive() for w in writers):
        record = rec.read_record(inst_dir, expect_uuid=U)
        if record is not None:
            reads.add(generation(record))  # whole and exactly as written, every time
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 4 * count
    for opening, closing in zip(lines[::2], lines[1::2], strict=True):
        assert opening.startswith("start ") and closing == "end " + opening[6:], lines
    final = generation(rec.read_record(inst_dir, expect_uuid=U))
    assert final in (1000 + count - 1, 2000 + count - 1)
    assert len(reads) >= 2  # the reads really overlapped the writes
    assert sorted(os.listdir(inst_dir)) == ["storage.yaml"]
