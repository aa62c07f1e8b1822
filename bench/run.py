"""storagectl benchmarks: `make bench` runs this and rewrites bench/RESULTS.md.

Each benchmark compares storagectl against a baseline measured in the same run on the
same data (these machines are noisy: only ratios within one run mean anything).

- inspect: `storagectl inspect -o json` of a sandbox node, as a whole process, against
  the naive loop operators script today (walk the domains with libvirt, `qemu-img info`
  per disk), for several sizes;
- audit: the whole cron run, before and after `persist --all`, for the same sizes;
- migrate (bench_migrate.py, when present): copy phase vs bare `qemu-img convert`;
- host conversion (bench_host.py): `migrate --all` of 8 instances vs the sum of the bare
  copies of their disks;
- live move (bench_live.py): a running guest's 4 GiB disk moved live vs offline, the
  pivot's switch-over, a guest writing 20 MiB/s, the pause of --verify paused.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
STORAGECTL = [PY, "-m", "storagectl"]

NAIVE = r"""
import json, subprocess, sys, libvirt, xml.etree.ElementTree as ET
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.openReadOnly(sys.argv[1])
out = []
for dom in conn.listAllDomains(0):
    root = ET.fromstring(dom.XMLDesc(0))
    for src in root.findall("./devices/disk/source"):
        path = src.get("file")
        if not path:
            continue
        r = subprocess.run(["qemu-img", "info", "--output=json", "--force-share", path],
                           capture_output=True, text=True)
        out.append(json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr})
print(json.dumps(out))
"""


FLOOR = r"""
import sys, libvirt
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.openReadOnly(sys.argv[1])
for dom in conn.listAllDomains(0):
    dom.XMLDesc(0)
"""


def timed(argv: list[str], repeat: int, ok: tuple[int, ...] = (0,)) -> tuple[float, list[float]]:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True)
        runs.append(time.perf_counter() - start)
        if proc.returncode not in ok:
            raise SystemExit(f"benchmark command failed: {argv}\n{proc.stderr[-2000:]}")
    return statistics.median(runs), runs


def build(root: Path, n: int, define: str | None = None) -> tuple[str, str, float, int]:
    start = time.perf_counter()
    argv = [*STORAGECTL, "sandbox", "create", str(root), "--instances", str(n)]
    if define:
        argv += ["--define", define]
    subprocess.run(argv, check=True, capture_output=True, text=True)
    took = time.perf_counter() - start
    uri = define or f"test://{root}/node.xml"
    conf = str(root / "etc/nova/nova.conf")
    disks = sum(1 for p in (root / "instances").glob("*/disk*") if p.name != "disk.info")
    return uri, conf, took, disks


LIBVIRTD_URI = "qemu:///system"


def undefine_sandbox(root: Path, uri: str) -> None:
    """Remove the domains a ``sandbox create --define`` put into ``uri``."""
    import json

    import libvirt

    manifest = json.loads((root / "sandbox.json").read_text())
    conn = libvirt.open(uri)
    try:
        for inst in manifest["instances"]:
            try:
                conn.lookupByUUIDString(inst["uuid"]).undefine()
            except libvirt.libvirtError:
                pass
    finally:
        conn.close()


def foreign_domains(uri: str) -> int:
    import libvirt

    conn = libvirt.openReadOnly(uri)
    try:
        return len(conn.listAllDomains(0))
    finally:
        conn.close()


def bench_node(sizes: list[int], define: str | None = None) -> list[str]:
    where = (
        f"a real libvirtd (`{define}`, QEMU driver; the sandbox's domains defined in it, "
        "not started)"
        if define
        else "the libvirt test driver (`test:///.../node.xml`)"
    )
    floor_note = (
        '"libvirt floor" is a process that only connects and reads every domain\'s XML '
        "(one `virDomainGetXMLDesc` RPC per domain): no tool can go below it."
        if define
        else '"libvirt floor" is a process that only opens the test-driver node file and '
        "reads every domain's XML: the test driver parses the whole node file on open, a "
        "cost a real `qemu:///system` does not have, paid by both contenders."
    )
    inspect_lines = [
        f"## inspect: whole process vs the naive `qemu-img info` loop - {where}",
        "",
        "The naive loop is what operators script today: walk the domains with libvirt and "
        "run `qemu-img info` per file disk. Both read the same sandbox in the same run.",
        "",
        floor_note,
        "",
        "| instances | disks | sandbox build | libvirt floor | storagectl inspect (median of 5) "
        "| naive loop (median) | speed-up | speed-up above the floor |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    audit_lines = [
        f"## audit: whole process - {where}",
        "",
        "`persist --all` once, then `audit -o json` (median of 5), on the same sandbox. "
        '"before persist" audits the same node with no records (every instance inferred, '
        "one `metadata-missing` each).",
        "",
        "| instances | audit before persist | persist --all (once) | audit (median) | runs |",
        "|---:|---:|---:|---:|---|",
    ]
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="storagectl-bench-") as tmp:
            root = Path(tmp) / "node"
            if define and foreign_domains(define):
                raise SystemExit(
                    f"{define} already has {foreign_domains(define)} domains: the benchmark "
                    "needs a libvirtd with none (undefine them, or set BENCH_LIBVIRTD_SIZES= "
                    "to skip that part)"
                )
            uri, conf, build_s, disks = build(root, n, define)
            try:
                inspect_row, audit_row = _bench_size(root, tmp, uri, conf, n, build_s, disks)
            finally:
                if define:
                    undefine_sandbox(root, define)
            inspect_lines.append(inspect_row)
            audit_lines.append(audit_row)
    return inspect_lines + [""] + audit_lines


def _bench_size(
    root: Path, tmp: str, uri: str, conf: str, n: int, build_s: float, disks: int
) -> tuple[str, str]:
    args = ["-c", uri, "--nova-conf", conf, "--lock-path", f"{tmp}/locks"]
    ours, ours_runs = timed([*STORAGECTL, *args, "inspect", "-o", "json"], 5)
    naive, _ = timed([PY, "-c", NAIVE, uri], 3 if n <= 1000 else 1)
    floor, _ = timed([PY, "-c", FLOOR, uri], 3)
    above = (naive - floor) / max(ours - floor, 1e-3)
    inspect_row = (
        f"| {n} | {disks} | {build_s:.1f} s | {floor:.3f} s | {ours:.3f} s "
        f"(runs: {', '.join(f'{r:.3f}' for r in ours_runs)}) | {naive:.2f} s | "
        f"{naive / ours:.0f}x | {above:.0f}x |"
    )
    print(inspect_row, flush=True)
    before, _ = timed([*STORAGECTL, *args, "audit", "-o", "json"], 1, ok=(0, 1, 2))
    persist_s, _ = timed([*STORAGECTL, *args, "persist", "--all", "-o", "json"], 1)
    audit_s, audit_runs = timed([*STORAGECTL, *args, "audit", "-o", "json"], 5, ok=(0, 1, 2))
    audit_row = (
        f"| {n} | {before:.3f} s | {persist_s:.2f} s | {audit_s:.3f} s | "
        f"{', '.join(f'{r:.3f}' for r in audit_runs)} |"
    )
    print(audit_row, flush=True)
    return inspect_row, audit_row


def main() -> None:
    os.environ.setdefault("STORAGECTL_LOG_FILE", "/dev/null")
    sizes = [int(s) for s in os.environ.get("BENCH_SIZES", "100,1000,5000").split(",")]
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = bench_node(sizes)
    # The same against a real libvirtd (what operators point storagectl at): the test
    # driver's own cost of parsing its node file is gone, the RPC per domain is not.
    real_sizes = [
        int(x) for x in os.environ.get("BENCH_LIBVIRTD_SIZES", "100,1000").split(",") if x
    ]
    if real_sizes:
        sys.path.insert(0, str(ROOT))
        from tests.env.libvirtd import qemu_driver_answers, start_libvirtd, stop_libvirtd

        daemon = None if qemu_driver_answers(LIBVIRTD_URI) else start_libvirtd()
        try:
            body += [""] + bench_node(real_sizes, define=LIBVIRTD_URI)
        finally:
            if daemon is not None:
                stop_libvirtd(daemon)
    try:
        sys.path.insert(0, str(HERE))
        import bench_migrate  # noqa: PLC0415 - optional until migrate lands
    except ImportError:
        bench_migrate = None
    if bench_migrate is not None:
        body += [""] + bench_migrate.run()
    import bench_host  # noqa: PLC0415 - beside this file

    body += [""] + bench_host.run()
    import bench_live  # noqa: PLC0415 - beside this file

    body += [""] + bench_live.run()
    qemu = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True)
    header = [
        "# Benchmark results",
        "",
        f"Written by `make bench` on {started}; {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {qemu.stdout.splitlines()[0]}.",
        "Figures are wall-clock seconds of whole processes (start-up included). Ratios "
        "compare runs made one after the other in this same run; absolute numbers on these "
        "shared machines are noisy.",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(header + body) + "\n")
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
