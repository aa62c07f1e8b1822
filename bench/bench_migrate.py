"""migrate benchmark: the copy phase of qcow2 -> flat against bare ``qemu-img convert``.

Called by bench/run.py (``run() -> list[str]``, markdown lines); also runnable alone:
``python bench/bench_migrate.py``. Everything runs in this one process on the same data,
one after the other, so only the ratios mean something on a noisy shared machine:

- copy phase: the engine's copy step (``qemu-img convert -p -t none -n
  --target-is-zero`` into the target the create step made, progress parsed, then the
  fsync of the target and its directory: durable, issue #19) vs two bare copies of the
  same image to a new file: ``qemu-img convert -f qcow2 -O raw`` (unflushed: the data
  may still be in the page cache when it exits) and the same followed by an fsync of
  the copy (durable), median of ``RUNS`` each, the order rotating;
- verification (``qemu-img compare``) and the whole migration, reported separately;
- sparse: a 20 GiB disk holding 1 GiB of data, whose copy should cost about what the
  1 GiB of data costs, not the 20 GiB.

The domain lives in libvirt's test driver (``test:///node.xml``, shut off through
``<test:runstate>5``), so no libvirtd is needed; the files are real.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from storagectl.host.config import load_nova_config  # noqa: E402
from storagectl.host.process import Runner  # noqa: E402
from storagectl.migrate.engine import Engine, Settings  # noqa: E402
from storagectl.migrate.plan import Options  # noqa: E402

GiB = 1 << 30
RUNS = int(os.environ.get("BENCH_MIGRATE_RUNS", "9"))
# A disk-backed file system by default: on a tmpfs a flush costs nothing, and the cost
# of durability (issue #19) is what is measured. Each run starts after a sync, so the
# writeback of the previous run's dirty pages is not charged to the next.
WORKDIR = os.environ.get("BENCH_MIGRATE_DIR", "/var/tmp")
CASES = (
    (4 * GiB, 2 * GiB, "4 GiB disk, 2 GiB of data"),
    (20 * GiB, 1 * GiB, "20 GiB sparse disk, 1 GiB of data"),
)

NODE = """<node><domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
<name>bench-{short}</name><uuid>{uuid}</uuid><memory>65536</memory><os><type>hvm</type></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='{disk}'/><target dev='vda' bus='virtio'/></disk></devices>
<test:runstate>5</test:runstate></domain></node>
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def children_cpu() -> float:
    """CPU seconds (user + system) of every child process waited for so far: on
    /dev/shm a copy is all CPU, and CPU time is far steadier than wall time on a
    machine whose neighbours steal cycles."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Clock:
    """Progress sink and step reporter that timestamps the copy and each step."""

    def __init__(self) -> None:
        self.copy_start = self.copy_end = 0.0
        self.cpu_start = self.cpu_end = 0.0
        self.marks: list[tuple[str, float]] = []

    def start(self, disk: str, total: int) -> None:
        self.copy_start = time.perf_counter()
        self.cpu_start = children_cpu()

    def update(self, disk: str, percent: float) -> None:
        pass

    def finish(self, disk: str, ok: bool) -> None:
        self.copy_end = time.perf_counter()
        self.cpu_end = children_cpu()  # qemu-img convert has been waited for by now

    def say(self, message: str) -> None:
        self.marks.append((message.rsplit(": ", 1)[-1], time.perf_counter()))

    def step(self, name: str, began: float) -> float:
        times = [began] + [t for _, t in self.marks]
        names = [n for n, _ in self.marks]
        i = names.index(f"{name} done")
        return times[i + 1] - times[i]


def build(root: Path, vsize: int, data: int) -> tuple[str, str, Path, dict[str, bytes]]:
    uuid = str(uuidlib.uuid4())
    inst = root / "instances" / uuid
    inst.mkdir(parents=True)
    disk = inst / "disk"
    sh("qemu-img", "create", "-q", "-f", "qcow2", str(disk), str(vsize))
    # Data spread over the disk in 64 MiB extents, as a guest's files would be.
    step = max(vsize // (data // (64 << 20)), 64 << 20)
    for off in range(0, data // (64 << 20)):
        sh("qemu-io", "-f", "qcow2", "-c", f"write -P {off % 250 + 1} {off * step} 64M", str(disk))
    conf = root / "nova.conf"
    conf.write_text(f"[DEFAULT]\ninstances_path = {root / 'instances'}\n")
    (root / "node.xml").write_text(NODE.format(short=uuid[:8], uuid=uuid, disk=disk))
    uri = f"test://{root / 'node.xml'}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "storagectl",
            "-c",
            uri,
            "--nova-conf",
            str(conf),
            "--lock-path",
            str(root / "locks"),
            "--log-file",
            "/dev/null",
            "persist",
            uuid,
        ],
        check=True,
        capture_output=True,
        cwd=HERE.parent,
    )
    saved = {n: (inst / n).read_bytes() for n in ("storage.yaml",)}
    return uri, uuid, inst, saved


def migrate_once(root: Path, uri: str, uuid: str) -> tuple[float, float, float, float]:
    clock = Clock()
    nova = load_nova_config([root / "nova.conf"])
    engine = Engine(
        Settings(
            uri=uri,
            nova=nova,
            runner=Runner(),
            lock_path=str(root / "locks"),
            progress=clock,
            say=clock.say,
        )
    )
    began = time.perf_counter()
    plan = engine.prepare(uuid, Options(to="flat"))
    ran = time.perf_counter()
    engine.run(plan)
    total = time.perf_counter() - began
    copy_cpu = clock.cpu_end - clock.cpu_start
    return clock.copy_end - clock.copy_start, clock.step("verify", ran), total, copy_cpu


def reset(inst: Path, saved: dict[str, bytes]) -> None:
    os.replace(inst / "disk.retained-qcow2", inst / "disk")
    for name, data in saved.items():
        (inst / name).write_bytes(data)


def bare(src: Path, dst: Path, *, durable: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds of one bare ``qemu-img convert``; ``durable``: followed by an
    fsync of the copy (``qemu-img convert && sync``, the cheapest durable copy)."""
    os.sync()
    cpu, began = children_cpu(), time.perf_counter()
    sh("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(src), str(dst))
    if durable:
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    took, cpu = time.perf_counter() - began, children_cpu() - cpu
    dst.unlink()
    return took, cpu


def run() -> list[str]:
    lines = [
        "## migrate: qcow2 -> flat copy phase vs bare `qemu-img convert`, unflushed and durable",
        "",
        f"Same image, same run, {RUNS} rounds of three contenders, the order rotating "
        f"from round to round: median, and best of {RUNS} (the run least disturbed by the "
        "neighbours of this shared machine). Bare = `qemu-img convert -f qcow2 -O raw` "
        "into a new file: unflushed (what it leaves may still be page cache) and durable "
        "(the same, then an fsync of the copy). Copy = the engine's copy step (convert -p "
        "-t none -n --target-is-zero into the created target, progress parsed, then the "
        "fsync of the copy and its directory: on stable storage when the journal says "
        "copied, issue #19); verify = fsync, drop the target's page cache, `qemu-img "
        "compare` (reads the copy from the disk); total = prepare (inspect, preflight) + "
        f"every journaled step. Files on {WORKDIR} (`BENCH_MIGRATE_DIR`; a disk-backed "
        "file system: on a tmpfs a flush is free), a sync before each timed run. "
        "qemu-img CPU = user + system seconds of the qemu-img child (getrusage).",
        "",
        "| disk | bare unflushed (median / best) | bare durable (median / best) "
        "| storagectl copy (median / best) | copy / bare unflushed (median / best) "
        "| copy / bare durable (median / best) | qemu-img CPU, bare unflushed / copy "
        "(median) | verify | whole migration |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory(prefix="storagectl-bench-migrate-", dir=WORKDIR) as tmp:
        for vsize, data, label in CASES:
            root = Path(tmp) / f"c{vsize}"
            uri, uuid, inst, saved = build(root, vsize, data)
            bares, durables, copies, verifies, totals, cpus = [], [], [], [], [], []
            bare(inst / "disk", root / "warm.raw")  # same page-cache state for all

            contenders = ["bare unflushed", "bare durable", "storagectl copy"]
            for i in range(RUNS):
                # Rotate who goes first: the first of a round gets the memory the
                # previous round just freed, which on this VM is not the same cost.
                for who in contenders[i % 3 :] + contenders[: i % 3]:
                    if who == "bare unflushed":
                        bares.append(bare(inst / "disk", root / "bare.raw"))
                    elif who == "bare durable":
                        durables.append(bare(inst / "disk", root / "bare.raw", durable=True)[0])
                    else:
                        os.sync()
                        copy_s, verify_s, total_s, copy_cpu = migrate_once(root, uri, uuid)
                        reset(inst, saved)
                        copies.append(copy_s)
                        verifies.append(verify_s)
                        totals.append(total_s)
                        cpus.append(copy_cpu)
            b = statistics.median(x for x, _ in bares)
            bb = min(x for x, _ in bares)
            d, db = statistics.median(durables), min(durables)
            c, cb = statistics.median(copies), min(copies)
            lines.append(
                f"| {label} | {b:.2f} / {bb:.2f} s | {d:.2f} / {db:.2f} s | "
                f"{c:.2f} / {cb:.2f} s | {c / b:.2f} / {cb / bb:.2f} | "
                f"{c / d:.2f} / {cb / db:.2f} | "
                f"{statistics.median(x for _, x in bares):.2f} / "
                f"{statistics.median(cpus):.2f} s | "
                f"{statistics.median(verifies):.2f} s | "
                f"{statistics.median(totals):.2f} s |"
            )
            print(lines[-1], flush=True)
            shutil.rmtree(root)
    return lines


if __name__ == "__main__":
    print("\n".join(run()))
