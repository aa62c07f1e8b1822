"""Host conversion benchmark (issue #15): ``migrate --all --to flat`` of 8 shut-off
instances, 2 disks each about half full, on /dev/shm, every disk verified - against
the sum of the bare ``qemu-img convert`` runs of the same disks, measured side by side
in the same run (these machines are noisy: only the ratio means something).

Called by bench/run.py (``run() -> list[str]``, markdown lines); also runnable alone:
``python bench/bench_host.py [ROUNDS]``. The domains live in storagectl's fake libvirt
(a JSON state file, as the unit tier's kill matrix uses) and libvirt's test driver for
the scan; the files, qemu-img and every step of every migration are real.
"""

from __future__ import annotations

import json
import os
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

from click.testing import CliRunner  # noqa: E402

from storagectl.cli import cli  # noqa: E402
from storagectl.cli.app import Application  # noqa: E402
from storagectl.host.libvirt_port import FakeLibvirt  # noqa: E402

INSTANCES = int(os.environ.get("BENCH_HOST_INSTANCES", "8"))
VSIZE = int(os.environ.get("BENCH_HOST_DISK_MIB", "512")) << 20
ROUNDS = 3
WORKDIR = os.environ.get("BENCH_HOST_DIR", "/dev/shm")
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
#: what both sides write: every disk's data once, and some room
WARM = INSTANCES * 2 * VSIZE


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def disk_xml(path: Path, dev: str) -> str:
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{path}'/><target dev='{dev}' bus='virtio'/></disk>"
    )


def domain(uuid: str, disks: list[Path], *, node: bool) -> str:
    ns = f" xmlns:test='{TEST_NS}'" if node else ""
    run = "<test:runstate>5</test:runstate>" if node else ""
    devs = "".join(disk_xml(p, d) for p, d in zip(disks, ("vda", "vdb"), strict=False))
    return (
        f"<domain type='test'{ns}><name>instance-{uuid[:8]}</name><uuid>{uuid}</uuid>"
        f"<memory unit='KiB'>65536</memory><os><type arch='x86_64'>hvm</type></os>"
        f"<devices>{devs}</devices>{run}</domain>"
    )


class Node:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.instances = root / "instances"
        self.instances.mkdir(parents=True)
        self.conf = root / "nova.conf"
        self.conf.write_text(f"[DEFAULT]\nstate_path = {root}\ninstances_path = {self.instances}\n")
        self.state = root / "libvirt.json"
        self.uri = f"test://{root / 'node.xml'}"
        self.disks: list[Path] = []
        doms, nodes = [], []
        for _ in range(INSTANCES):
            uuid = str(uuidlib.uuid4())
            d = self.instances / uuid
            d.mkdir()
            files = [d / "disk", d / "disk.local"]
            for n, f in enumerate(files):
                sh("qemu-img", "create", "-q", "-f", "qcow2", str(f), str(VSIZE))
                # about half the disk written, in 32 MiB extents every 64 MiB
                cmds = [
                    f"write -P {(off + n) % 250 + 1} {off * 64}M 32M"
                    for off in range(VSIZE // (64 << 20))
                ]
                sh("qemu-io", "-f", "qcow2", *sum((["-c", c] for c in cmds), []), str(f))
            (d / "disk.info").write_text(json.dumps({str(f): "qcow2" for f in files}))
            self.disks += files
            doms.append(domain(uuid, files, node=False))
            nodes.append(domain(uuid, files, node=True))
        (root / "node.xml").write_text("<node>" + "".join(nodes) + "</node>")
        FakeLibvirt(doms, uri=self.uri, path=self.state)
        code, out = self.cli("persist", "--all")
        if code != 0:
            raise SystemExit(f"persist failed: {out}")

    def cli(self, *args: str) -> tuple[int, str]:
        app = Application(libvirt_factory=lambda uri: FakeLibvirt(uri=uri, path=self.state))
        argv = ["-c", self.uri, "--nova-conf", str(self.conf), "--lock-path"]
        argv += [str(self.root / "locks"), "--log-file", "/dev/null", *args]
        res = CliRunner().invoke(cli, argv, obj=app)
        return res.exit_code, res.output


def bare(disks: list[Path], scratch: Path) -> float:
    """The sum of the bare copies, one after the other: what the disks cost to copy.

    Every copy is kept until the last is made, as the conversion keeps its targets (see
    :func:`warm`)."""
    total, made = 0.0, []
    for n, src in enumerate(disks):
        dst = scratch / f"bare-{n}.raw"
        began = time.perf_counter()
        sh("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(src), str(dst))
        total += time.perf_counter() - began
        made.append(dst)
    for dst in made:
        dst.unlink()
    return total


def warm(where: Path, size: int) -> None:
    """Touch ``size`` bytes of tmpfs and free them, right before a measured phase: in this
    VM pages the guest has not used lately cost 3-8x to write (the host hands memory
    back lazily), and a phase run on the pages another just freed would look faster
    than one run after a pause. Both sides start from warm memory."""
    block = b"\1" * (8 << 20)
    path = where / "warm"
    with open(path, "wb") as fh:
        for _ in range(size // len(block)):
            fh.write(block)
    path.unlink()


def convert(node: Node, parallel: int) -> float:
    began = time.perf_counter()
    code, out = node.cli("migrate", "--all", "--to", "flat", "--parallel", str(parallel), "--yes")
    took = time.perf_counter() - began
    if code != 0 or f"{INSTANCES} instance(s) moved" not in out:
        raise SystemExit(f"host conversion failed ({code}): {out[-2000:]}")
    return took


def run(rounds: int = ROUNDS) -> list[str]:
    rows: dict[str, list[float]] = {"bare": [], "p1": [], "p2": []}
    base = Path(tempfile.mkdtemp(prefix="stctl-bench-host-", dir=WORKDIR))
    try:
        for r in range(rounds):
            for parallel in (1, 2) if r % 2 == 0 else (2, 1):
                root = base / f"r{r}-p{parallel}"
                node = Node(root)
                if parallel == 1:  # the same disks, copied bare, right before
                    warm(base, WARM)
                    rows["bare"].append(bare(node.disks, base))
                warm(base, WARM)
                rows[f"p{parallel}"].append(convert(node, parallel))
                shutil.rmtree(root)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    data = INSTANCES * 2 * VSIZE // 2 >> 20
    lines = [
        f"## migrate --all: host conversion of {INSTANCES} instances into flat, vs bare copies",
        "",
        f"{INSTANCES} shut-off instances, 2 qcow2 disks of {VSIZE >> 20} MiB each, half "
        f"written ({data} MiB of data in all), on {WORKDIR}; {rounds} rounds, a fresh node "
        "each. Bare = the sum of `qemu-img convert -f qcow2 -O raw` of every disk, one "
        "after the other, on the same files right before. Conversion = the whole "
        "`storagectl migrate --all --to flat --yes` (scan, host plan, preflight, then per "
        "instance: create, copy, fsync, verify with `qemu-img compare` of every disk, "
        "switch, cleanup), `--parallel` instances at a time. Before each measured phase "
        f"{WARM >> 30} GiB of tmpfs is written and freed: in this VM, pages not used "
        "lately cost 3-8x to write (the host reclaims freed memory lazily), which would "
        "otherwise favour whichever side ran right after the other freed its files. "
        "Median seconds:",
        "",
        "| what | median s | runs | / bare |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("bare", "bare copies (sum)"),
        ("p1", "--parallel 1"),
        ("p2", "--parallel 2"),
    ):
        runs = ", ".join(f"{x:.2f}" for x in rows[key])
        lines.append(f"| {label} | {med[key]:.2f} | {runs} | {med[key] / med['bare']:.2f}x |")
    return lines


if __name__ == "__main__":
    print("\n".join(run(int(sys.argv[1]) if len(sys.argv) > 1 else ROUNDS)))
