"""Live move benchmark (issue #16): a 4 GiB raw disk holding 2 GiB, flat -> qcow2.

Measured side by side in the same run, on the same kind of disk, each round:

- offline: ``storagectl migrate --to qcow2`` of the shut-off instance (copy + verify);
- live: the same move of the running, idle guest (block copy, ready, pivot, switch);
- bare: ``qemu-img convert`` of the disk, for scale;
- the switch-over: each pivot (``blockJobAbort(PIVOT)``, call to job completed), as
  storagectl reports it;
- a guest writing about 20 MiB/s (HMP ``qemu-io`` writes of 1 MiB through QEMU's block
  layer) during the whole copy: does it converge, and in how long;
- ``--verify paused``: the guest-visible pause (suspend, full compare, pivot, resume).

Runs against the real libvirtd (started if none answers) with a firmware-only guest; the
disks live in BENCH_LIVE_DIR (default /dev/shm: tmpfs, as bench_host.py, so that the
page cache does not make whichever side runs second the winner). Called by bench/run.py
(``run() -> list[str]``); also runnable alone: ``python bench/bench_live.py [ROUNDS]``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

ROUNDS = 3
VSIZE_MIB = int(os.environ.get("BENCH_LIVE_DISK_MIB", "4096"))
DATA_MIB = int(os.environ.get("BENCH_LIVE_DATA_MIB", "2048"))
WORKDIR = os.environ.get("BENCH_LIVE_DIR", "/dev/shm")
WRITE_RATE_MIB = 20
PY = sys.executable


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


class Node:
    def __init__(self, root: Path, libvirtd) -> None:  # noqa: ANN001
        self.root, self.libvirtd = root, libvirtd
        self.instances = root / "instances"
        (self.instances / "_base").mkdir(parents=True)
        self.conf = root / "nova.conf"
        self.conf.write_text(
            f"[DEFAULT]\nstate_path = {root}\ninstances_path = {self.instances}\n"
            "[libvirt]\nimages_type = flat\n"
        )
        self.defined: list[str] = []

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        argv = [PY, "-m", "storagectl", "-c", self.libvirtd.uri, "--nova-conf", str(self.conf)]
        argv += ["--lock-path", str(self.root / "locks"), *args]
        res = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            raise SystemExit(f"bench_live: {args} failed:\n{res.stdout}\n{res.stderr}")
        return res

    def instance(self) -> str:
        from tests.env.libvirtd import minimal_domain_xml

        uuid = str(uuidlib.uuid4())
        d = self.instances / uuid
        d.mkdir()
        disk = d / "disk"
        sh("qemu-img", "create", "-q", "-f", "raw", str(disk), f"{VSIZE_MIB}M")
        writes = [
            a for i in range(0, DATA_MIB, 256) for a in ("-c", f"write -P {i % 251} {i}M 256M")
        ]
        sh("qemu-io", "-f", "raw", *writes, str(disk))
        (d / "disk.info").write_text(json.dumps({str(disk): "raw"}))
        xml = minimal_domain_xml(
            f"bench-live-{uuid[:8]}", uuid, [(str(disk), "raw", "vda")], self.libvirtd.domain_type
        )
        self.libvirtd.define(xml)
        self.defined.append(uuid)
        self.cli("persist", uuid)
        return uuid

    def dom(self, uuid: str):  # noqa: ANN201
        return self.libvirtd.connect().lookupByUUIDString(uuid)

    def drop(self, uuid: str) -> None:
        from tests.env.libvirtd import remove_domain

        remove_domain(self.dom(uuid))
        shutil.rmtree(self.instances / uuid, ignore_errors=True)


def writer(node: Node, uuid: str, stop: threading.Event, written: list[int]) -> None:
    """About WRITE_RATE_MIB MiB/s of guest writes, 1 MiB each, through QEMU's block layer."""
    import libvirt_qemu

    dom = node.dom(uuid)
    n = 0
    period = 1.0 / WRITE_RATE_MIB
    next_at = time.monotonic()
    while not stop.is_set():
        offset = (n * 7919) % (VSIZE_MIB - 1)
        cmd = f'qemu-io -d virtio-disk0/virtio-backend "write -P 0x7e {offset}M 1M"'
        try:
            libvirt_qemu.qemuMonitorCommand(
                dom, cmd, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
            )
        except Exception:  # noqa: BLE001 - the domain went away: stop writing
            return
        n += 1
        written[0] = n
        next_at += period
        time.sleep(max(0.0, next_at - time.monotonic()))


def timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pivots(stderr: str) -> list[float]:
    return [float(x) for x in re.findall(r"pivoted in (\d+) ms", stderr)]


def one_round(node: Node, scratch: Path) -> dict:
    """Each measured phase starts from warm tmpfs pages (bench_host.warm): in this VM
    pages not used lately cost 3-8x to write, and the phase run second would win."""
    from bench_host import warm

    def warmed() -> None:
        warm(scratch, 2 * (DATA_MIB << 20))

    out: dict = {}
    # bare convert of the same kind of disk
    u = node.instance()
    src = node.instances / u / "disk"
    dst = scratch / "bare.qcow2"
    warmed()
    out["bare"] = timed(
        lambda: sh(
            "qemu-img", "convert", "-t", "writeback", "-f", "raw", "-O", "qcow2", str(src), str(dst)
        )  # fmt: skip
    )
    dst.unlink()
    # offline
    warmed()
    out["offline"] = timed(lambda: node.cli("migrate", u, "--to", "qcow2", "--yes"))
    node.drop(u)
    # live, idle guest
    u = node.instance()
    node.dom(u).create()
    res: list[subprocess.CompletedProcess] = []
    warmed()
    out["live"] = timed(lambda: res.append(node.cli("migrate", u, "--to", "qcow2", "--yes")))
    out["pivots"] = pivots(res[0].stderr)
    node.drop(u)
    # live, guest writing ~20 MiB/s during the whole move
    u = node.instance()
    node.dom(u).create()
    warmed()
    stop, written = threading.Event(), [0]
    t = threading.Thread(target=writer, args=(node, u, stop, written), daemon=True)
    t.start()
    start = time.perf_counter()
    res = [node.cli("migrate", u, "--to", "qcow2", "--yes", "--converge-timeout", "600")]
    out["busy"] = time.perf_counter() - start
    stop.set()
    t.join()
    out["busy_mib"] = written[0]
    out["busy_rate"] = written[0] / out["busy"]
    out["pivots"] += pivots(res[0].stderr)
    node.drop(u)
    # --verify paused
    u = node.instance()
    node.dom(u).create()
    res = [node.cli("migrate", u, "--to", "qcow2", "--yes", "--verify", "paused")]
    m = re.search(r"was paused (\d+) ms", res[0].stderr)
    out["paused"] = float(m.group(1)) / 1000 if m else float("nan")
    node.drop(u)
    return out


def run(rounds: int = ROUNDS) -> list[str]:
    from tests.env.libvirtd import start_libvirtd, stop_libvirtd

    os.environ.setdefault("STORAGECTL_LOG_FILE", "/dev/null")
    daemon = lv = start_libvirtd()  # the one answering, or one started (and stopped) here
    base = Path(tempfile.mkdtemp(prefix="storagectl-bench-live-", dir=WORKDIR))
    os.chmod(base, 0o755)
    rows = []
    try:
        node = Node(base / "node", lv)
        scratch = base / "scratch"
        scratch.mkdir()
        for _ in range(rounds):
            rows.append(one_round(node, scratch))
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if daemon is not None:
            stop_libvirtd(daemon)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    ratio = statistics.median(r["live"] / r["offline"] for r in rows)
    all_pivots = [p for r in rows for p in r["pivots"]]
    return [
        f"## Live move (issue #16): {VSIZE_MIB >> 10} GiB raw disk holding {DATA_MIB >> 10} GiB, "
        f"flat -> qcow2, real libvirtd + {lv.domain_type.upper()} guest, {WORKDIR}",
        "",
        f"{rounds} rounds, medians; offline and live measured in the same round on the same "
        "kind of disk (only the ratio means something on this noisy VM).",
        "",
        "| what | seconds |",
        "|---|---|",
        f"| bare `qemu-img convert` (scale) | {med('bare'):.2f} |",
        f"| offline `migrate --to qcow2` (copy + verify) | {med('offline'):.2f} |",
        f"| live `migrate --to qcow2`, idle guest | {med('live'):.2f} |",
        f"| live, guest writing {WRITE_RATE_MIB} MiB/s | {med('busy'):.2f} |",
        "",
        f"- live / offline: **{ratio:.2f}x** (per round: "
        + ", ".join(f"{r['live'] / r['offline']:.2f}" for r in rows)
        + "; the issue's limit: 1.2x)",
        "- switch-over (pivot call to job completed): median "
        f"**{statistics.median(all_pivots):.0f} ms**, max {max(all_pivots):.0f} ms over "
        f"{len(all_pivots)} pivots (limit: 100 ms median)",
        f"- busy guest: converged every round; it wrote {med('busy_mib'):.0f} MiB at "
        f"{med('busy_rate'):.1f} MiB/s during the move",
        f"- `--verify paused`: the guest was paused {med('paused'):.2f} s (a full "
        f"`qemu-img compare` of {VSIZE_MIB >> 10} GiB, then the pivot)",
    ]


if __name__ == "__main__":
    print("\n".join(run(int(sys.argv[1]) if len(sys.argv) > 1 else ROUNDS)))
