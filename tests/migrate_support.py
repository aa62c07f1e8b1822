"""Builders and probes shared by the ``storagectl migrate`` tests on real components.

A :class:`Node` is one compute host as storagectl sees it: an instances directory and a
nova.conf under a work directory, the real libvirtd, and (for the ceph tier) the test
cluster. :func:`make_instance` builds a Nova-like instance there - disks named and laid
out as Nova does, a domain defined shut off, ``disk.info``, a record written through the
CLI - and the probes read back what a guest would see (:func:`guest_view`), what the
domain points at, and what a migration may have left behind.

The CLI runs three ways: :meth:`Node.run` in this process (fast), :meth:`Node.cli` in a
subprocess, and :meth:`Node.killed` in a forked child with the test-only
``STORAGECTL_FAULT`` hook, which SIGKILLs it at a step boundary.

A node is converted as an operator converts a host (issue #15): ``migrate --to X`` names
the nova.conf the host will have (``--assume``, :func:`nova_after`) - without it
migrate refuses a move Nova would misread - and once the move is done (at once, or by a
later ``--resume``) the node's nova.conf says it (:meth:`Node.flip`). A test that gives
its own ``--assume`` / ``--nova-conf-after``, or sets ``node.strict``, gets its command
line as it wrote it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import yaml
from click.testing import CliRunner

from storagectl.cli import cli
from tests.env.ceph import CephCluster
from tests.env.libvirtd import Libvirtd, minimal_domain_xml

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]
STEPS = ("plan", "preflight", "create", "copy", "verify", "switch", "cleanup")
LIVE_STEPS = ("plan", "preflight", "create", "mirror", "ready", "pivot", "switch", "cleanup")
DISK_RE = re.compile(r"<disk[\s>].*?</disk>", re.DOTALL)
#: The libvirt secret uuid rbd disks of the test instances name (never defined: a shut-off
#: domain needs no secret, only a running one).
SECRET = "5b0f6c1e-1111-4c2d-8e3f-4a5b6c7d8e9f"


def sh(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def guest_sha(path: str | Path, fmt: str, scratch: Path) -> str:
    """sha256 of the guest-visible bytes (qemu-img convert -O raw, then hash)."""
    out = scratch / f"sha-{uuidlib.uuid4().hex}.raw"
    sh("qemu-img", "convert", "-f", fmt, "-O", "raw", str(path), str(out))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    return digest


def without_disk(xml: str, target: str) -> str:
    """The XML with the <disk> element of ``target`` cut out (everything else as is)."""
    for m in DISK_RE.finditer(xml):
        if f"<target dev='{target}'" in m.group(0):
            return xml[: m.start()] + xml[m.end() :]
    raise AssertionError(f"no disk {target}")


@dataclass
class Node:
    root: Path
    libvirtd: Libvirtd
    ceph: CephCluster | None = None
    #: pass command lines as given (no --assume added, nova.conf never flipped)
    strict: bool = False
    #: the settings of a migration that started and has not finished (killed)
    pending: list[tuple[str, str, str]] = field(default_factory=list)

    def converting(self, args: tuple[str, ...]) -> tuple[tuple[str, ...], list]:
        """``args`` with the --assume of a ``migrate --to`` (and the settings it names)."""
        if self.strict or args[:1] != ("migrate",) or "--to" not in args:
            return args, []
        if "--assume" in args or "--nova-conf-after" in args:
            return args, []
        settings = nova_after(args)
        extra = [a for s in settings for a in ("--assume", f"[{s[0]}] {s[1]}={s[2]}")]
        return (*args, *extra), settings

    def done(self, args: tuple[str, ...], settings: list, code: int) -> None:
        """After a command: flip nova.conf to what a finished migration assumed."""
        if self.strict or "--dry-run" in args:
            return
        if code == 0 and settings:
            self.flip(settings)
        elif code == 0 and args[:2] == ("migrate", "--resume") and self.pending:
            self.flip(self.pending)
        if code == 0 and args[:2] in (("migrate", "--resume"), ("migrate", "--rollback")):
            self.pending = []

    def flip(self, settings: list[tuple[str, str, str]]) -> None:
        """Set nova.conf options, as the operator does once the host is converted."""
        self.conf.write_text(set_options(self.conf.read_text(), settings))

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    @property
    def conf(self) -> Path:
        return self.root / "nova.conf"

    @property
    def cluster(self) -> CephCluster:
        assert self.ceph is not None, "this node has no Ceph cluster"
        return self.ceph

    def args(self) -> list[str]:
        return [
            "-c",
            self.libvirtd.uri,
            "--nova-conf",
            str(self.conf),
            "--lock-path",
            str(self.root / "locks"),
            "--log-file",
            str(self.root / "storagectl.log"),
        ]

    def argv(self, *args: str, prefix: tuple[str, ...] = ()) -> list[str]:
        """The storagectl command line for ``args`` against this node."""
        args, _ = self.converting(args)
        return [*prefix, sys.executable, "-m", "storagectl", *self.args(), *args]

    def spawn(self, *args: str) -> subprocess.Popen:
        """The CLI in the background (text pipes), for tests that break something while
        it runs; the caller communicates with it."""
        return subprocess.Popen(
            self.argv(*args),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def cli(
        self,
        *args: str,
        env: dict | None = None,
        timeout: float = 120,
        prefix: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess:
        res = subprocess.run(
            self.argv(*args, prefix=prefix),
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
        )
        self.done(args, self.converting(args)[1], res.returncode)
        return res

    def run(self, *args: str) -> subprocess.CompletedProcess:
        """The CLI in this process (faster); for commands the fault hook does not kill."""
        given = args
        args, settings = self.converting(args)
        res = CliRunner().invoke(cli, [*self.args(), *args])
        if res.exception and not isinstance(res.exception, SystemExit):
            raise res.exception
        self.done(given, settings, res.exit_code)
        return subprocess.CompletedProcess(args, res.exit_code, res.stdout, res.stderr)

    def killed(self, *args: str, fault: str) -> subprocess.CompletedProcess:
        """The CLI in a forked child with ``STORAGECTL_FAULT=fault`` (no interpreter
        start-up); returncode is -9 when the hook fired, stderr is kept otherwise."""
        err = self.root / f"killed-{os.getpid()}.err"
        given = args
        args, settings = self.converting(args)
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 70
            try:
                os.environ["STORAGECTL_FAULT"] = fault
                res = CliRunner().invoke(cli, [*self.args(), *args])
                err.write_text(f"{res.stderr}{res.exception!r}")
                code = res.exit_code
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        text = err.read_text() if err.exists() else ""
        err.unlink(missing_ok=True)
        if code == -9 and settings:
            self.pending = settings  # the migration started: --resume finishes it
        else:
            self.done(given, settings, code)
        return subprocess.CompletedProcess(args, code, "", text)

    def xml(self, uuid: str) -> str:
        dom = self.libvirtd.connect().lookupByUUIDString(uuid)
        return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    def record(self, uuid: str) -> dict:
        return yaml.safe_load((self.instances / uuid / "storage.yaml").read_text())


def nova_after(args: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """The nova.conf under which Nova reads the disks ``migrate ARGS`` leaves as stored:
    files - Nova's Flat images (each file's format from disk.info, so a partial move
    into qcow2 too); LVM - its volume group; RBD - its pool (the rest is the node's)."""
    to = args[args.index("--to") + 1]

    def given(flag: str) -> str | None:
        return args[args.index(flag) + 1] if flag in args else None

    if to in ("flat", "qcow2"):
        return [("libvirt", "images_type", "flat")]
    out = [("libvirt", "images_type", to)]
    if to == "lvm" and given("--volume-group"):
        out.append(("libvirt", "images_volume_group", given("--volume-group")))
    if to == "rbd" and given("--pool"):
        out.append(("libvirt", "images_rbd_pool", given("--pool")))
    return out


def set_options(text: str, settings: list[tuple[str, str, str]]) -> str:
    """nova.conf ``text`` with each ``(section, option, value)`` set (replaced in place,
    else added at the end of its section, which is made when missing)."""
    lines = text.splitlines()
    for section, option, value in settings:
        start = next((n for n, x in enumerate(lines) if x.strip() == f"[{section}]"), None)
        if start is None:
            lines += [f"[{section}]", f"{option} = {value}"]
            continue
        end = next(
            (n for n in range(start + 1, len(lines)) if lines[n].startswith("[")), len(lines)
        )
        found = next(
            (n for n in range(start + 1, end) if lines[n].split("=")[0].strip() == option),
            None,
        )
        if found is None:
            lines.insert(end, f"{option} = {value}")
        else:
            lines[found] = f"{option} = {value}"
    return "\n".join(lines) + "\n"


def new_node(
    libvirtd: Libvirtd, workdir: Path, ceph: CephCluster | None = None, *, libvirt_conf: str = ""
) -> Node:
    """A node under ``workdir``: ``instances/_base`` and a nova.conf naming them (and, with
    ``ceph``, the cluster's pool, conf and user); ``libvirt_conf`` adds ``[libvirt]`` lines.

    Its Nova uses Flat images unless ``libvirt_conf`` names an images_type: each file's
    format from disk.info, so Nova reads the instances :func:`make_instance` builds (a
    qcow2 or raw root beside a raw disk.local) as they are stored."""
    n = Node(workdir, libvirtd, ceph)
    (n.instances / "_base").mkdir(parents=True)
    text = f"[DEFAULT]\nstate_path = {n.root}\ninstances_path = {n.instances}\n[libvirt]\n"
    if "images_type" not in libvirt_conf:
        text += "images_type = flat\n"
    if ceph is not None:
        text += (
            f"images_rbd_pool = {ceph.pool}\n"
            f"images_rbd_ceph_conf = {ceph.conf}\nrbd_user = {ceph.user}\n"
        )
    n.conf.write_text(text + libvirt_conf)
    return n


# -- instances ------------------------------------------------------------------------


def make_instance(
    node: Node,
    *,
    root: str = "qcow2",
    size_mib: int = 32,
    data_mib: int = 4,
    local_mib: int | None = 8,
) -> str:
    """A persisted, shut-off instance; returns its uuid.

    ``root``: ``qcow2`` (on a raw ``_base`` image holding ``data_mib`` of pattern 5, plus
    1 MiB of pattern 9 in the overlay), ``flat`` (raw, ``data_mib`` of pattern 7 at 1 MiB),
    ``rbd`` (that flat disk imported as ``<pool>/<uuid>_disk``, with an ``<auth>`` naming
    :data:`SECRET`) or ``ploop`` (that flat disk converted to a parallels ``root.hds`` in
    the directory ``disk``, as Nova's Ploop backend lays it out). ``local_mib``: a raw
    ``disk.local`` of that size (vdb), or none.
    """
    uuid = str(uuidlib.uuid4())
    d = node.instances / uuid
    d.mkdir()
    disk = d / "disk"
    source, fmt = str(disk), "raw"
    if root == "qcow2":
        base = node.instances / "_base" / hashlib.sha1(uuid.encode()).hexdigest()
        sh("qemu-img", "create", "-q", "-f", "raw", str(base), str(size_mib * MiB))
        sh("qemu-io", "-f", "raw", "-c", f"write -P 5 0 {data_mib}M", str(base))
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(disk))
        sh("qemu-io", "-f", "qcow2", "-c", "write -P 9 2M 1M", str(disk))
        fmt = "qcow2"
    else:
        sh("qemu-img", "create", "-q", "-f", "raw", str(disk), str(size_mib * MiB))
        sh("qemu-io", "-f", "raw", "-c", f"write -P 7 1M {data_mib}M", str(disk))
    info = {source: fmt}
    if root == "ploop":
        flat = d / "flat.tmp"
        disk.rename(flat)
        disk.mkdir()
        make_ploop(flat, disk)
        flat.unlink()
        fmt, info = "ploop", {source: "ploop"}
    disks = [(source, fmt, "vda")]
    if local_mib:
        sh("qemu-img", "create", "-q", "-f", "raw", str(d / "disk.local"), str(local_mib * MiB))
        disks.append((str(d / "disk.local"), "raw", "vdb"))
        info[str(d / "disk.local")] = "raw"
    xml = minimal_domain_xml(f"storagectl-mig-{uuid[:8]}", uuid, disks, node.libvirtd.domain_type)
    if root == "rbd":
        cluster = node.cluster
        image = f"{uuid}_disk"
        # create + a sparse qemu-img copy: `rbd import` writes every zero (~1.5 s more)
        cluster.rbd("create", "--size", f"{size_mib}M", f"{cluster.pool}/{image}")
        sh(
            "qemu-img",
            "convert",
            "-n",
            "--target-is-zero",
            "-f",
            "raw",
            "-O",
            "raw",
            str(disk),
            cluster.qemu_uri(image),
        )
        disk.unlink()
        del info[source]
        info[f"rbd:{cluster.pool}/{image}"] = "raw"
        xml = as_rbd_disk(xml, "vda", cluster, image)
    (d / "disk.info").write_text(json.dumps(info))
    node.libvirtd.define(xml)
    res = node.run("persist", uuid)
    assert res.returncode == 0, res.stdout + res.stderr
    return uuid


def make_ploop(raw: Path, directory: Path) -> Path:
    """Nova's ploop disk from a raw image: ``directory/root.hds`` in the parallels
    (ploop "expanded") format, as ``qemu-img convert -O parallels`` writes it, and the
    ``DiskDescriptor.xml`` that ``ploop restore-descriptor`` would write next to it."""
    hds = directory / "root.hds"
    sh("qemu-img", "convert", "-f", "raw", "-O", "parallels", str(raw), str(hds))
    size = raw.stat().st_size
    (directory / "DiskDescriptor.xml").write_text(
        '<?xml version="1.0"?>\n<Parallels_disk_image Version="1.0">\n'
        f"  <Disk_Parameters><Disk_size>{size // 512}</Disk_size></Disk_Parameters>\n"
        f"  <StorageData><Storage><Start>0</Start><End>{size // 512}</End>"
        "<Blocksize>2048</Blocksize>\n"
        "    <Image><GUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}</GUID>"
        "<Type>Compressed</Type><File>root.hds</File></Image>\n"
        "  </Storage></StorageData>\n</Parallels_disk_image>\n"
    )
    return hds


def as_rbd_disk(xml: str, target: str, cluster: CephCluster, image: str) -> str:
    """``xml`` with disk ``target`` on ``<pool>/<image>`` as Nova writes an rbd disk
    (``<auth>`` with :data:`SECRET`, the monitor as ``<host>``)."""
    root = ET.fromstring(xml)
    for disk in root.findall("./devices/disk"):
        if disk.find("target").get("dev") != target:
            continue
        disk.set("type", "network")
        disk.remove(disk.find("source"))
        auth = ET.SubElement(disk, "auth", username=cluster.user)
        ET.SubElement(auth, "secret", type="ceph", uuid=SECRET)
        src = ET.SubElement(disk, "source", protocol="rbd", name=f"{cluster.pool}/{image}")
        ET.SubElement(src, "host", name="127.0.0.1", port=str(cluster.port))
        return ET.tostring(root, encoding="unicode")
    raise AssertionError(f"no disk {target}")


# -- probes ---------------------------------------------------------------------------


def disk_element(node: Node, uuid: str, target: str = "vda") -> str:
    """The persistent ``<disk>`` element of ``target``."""
    for m in DISK_RE.finditer(node.xml(uuid)):
        if f"dev='{target}'" in m.group(0):
            return m.group(0)
    raise AssertionError(f"no disk {target} in {uuid}")


def domain_disk(node: Node, uuid: str, target: str) -> tuple[str, str]:
    """(source file, driver type) of one file disk in the persistent XML."""
    el = disk_element(node, uuid, target)
    return (
        re.search(r"<source file='([^']+)'", el).group(1),
        re.search(r"<driver [^>]*type='([^']+)'", el).group(1),
    )


def images(cluster: CephCluster, uuid: str) -> list[str]:
    """The instance's RBD images in the test pool."""
    return sorted(
        i
        for i in json.loads(cluster.rbd("ls", "--pool", cluster.pool, "--format", "json"))
        if i.startswith(uuid)
    )


def rbd_sha(cluster: CephCluster, image: str, scratch: Path) -> str:
    return guest_sha(cluster.qemu_uri(image), "raw", scratch)


def guest_view(node: Node, uuid: str, scratch: Path, target: str = "vda") -> str:
    """sha256 of what ``target`` shows the guest, wherever the persistent XML points it
    (a file in its format, a ploop directory's root.hds, or an RBD image)."""
    el = disk_element(node, uuid, target)
    fmt = re.search(r"<driver [^>]*type='([^']+)'", el).group(1)
    if "protocol='rbd'" in el:
        image = re.search(r"<source protocol='rbd' name='[^/']+/([^']+)'", el).group(1)
        assert fmt == "raw"
        return rbd_sha(node.cluster, image, scratch)
    path = re.search(r"<source file='([^']+)'", el).group(1)
    if fmt == "ploop":  # Nova's ploop disk is a directory; qemu-img reads its root.hds
        fmt = "parallels"
        if os.path.isdir(path):
            path = os.path.join(path, "root.hds")
    return guest_sha(path, fmt, scratch)


def wait_while_running(
    proc: subprocess.Popen, ready: Callable[[], bool], *, timeout: float = 30, poll: float = 0.05
) -> None:
    """Wait until ``ready()`` while ``proc`` still runs; fail (with its output) if it ended
    first or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"ended (exit {proc.returncode}) before it was ready:\n{out}{err}")
        if time.monotonic() >= deadline:
            # Never wait for a process that may itself be stuck (a live move waits up to
            # --converge-timeout): kill it, then show what it had said.
            proc.kill()
            out, err = proc.communicate(timeout=60)
            raise AssertionError(f"not ready within {timeout}s; killed:\n{out}{err}")
        time.sleep(poll)


#: What the directory of a make_instance() instance holds once a migration is done and
#: no source was kept: the disks under their Nova names, disk.info and the record.
CLEAN_INSTANCE_DIR = ["disk", "disk.info", "disk.local", "storage.yaml"]


def dir_names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def leftovers(node: Node, uuid: str) -> list[str]:
    """Files a migration may leave behind by mistake."""
    d = node.instances / uuid
    return sorted(
        p.name
        for p in d.iterdir()
        if p.name.endswith((".migrating", ".rollback")) or p.name.startswith(".")
    )


def snapshot(node: Node, uuid: str) -> dict:
    """Everything a rollback must restore: XML, record, disk.info, the file names and
    (with Ceph) the instance's images."""
    d = node.instances / uuid
    state = {
        "xml": node.xml(uuid),
        "record": (d / "storage.yaml").read_bytes(),
        "disk.info": (d / "disk.info").read_bytes(),
        "files": sorted(os.listdir(d)),
    }
    if node.ceph is not None:
        state["images"] = images(node.ceph, uuid)
    return state


# -- running guests (live moves) ------------------------------------------------------------


def start(node: Node, uuid: str) -> None:
    """Start the firmware-only guest (it keeps its disks open)."""
    node.libvirtd.connect().lookupByUUIDString(uuid).create()


def live_disk(node: Node, uuid: str, target: str) -> tuple[str, str]:
    """(source, driver type) of a disk in the LIVE XML (a path, or pool/image)."""
    xml = node.libvirtd.connect().lookupByUUIDString(uuid).XMLDesc(0)
    for disk in ET.fromstring(xml).iter("disk"):
        if disk.find("target").get("dev") == target:
            src = disk.find("source")
            name = src.get("file") or src.get("dev") or src.get("name")
            return name, disk.find("driver").get("type")
    raise AssertionError(f"no disk {target} in {uuid}")


def hmp_write(node: Node, uuid: str, target: str, pattern: int, offset: str, length: str) -> None:
    """A guest write through QEMU's own block layer: HMP ``qemu-io`` on the disk's
    device (its qdev id from the live XML's ``<alias>``), as the guest's writes go."""
    import libvirt_qemu

    dom = node.libvirtd.connect().lookupByUUIDString(uuid)
    for disk in ET.fromstring(dom.XMLDesc(0)).iter("disk"):
        if disk.find("target").get("dev") == target:
            qdev = disk.find("alias").get("name")
            break
    else:
        raise AssertionError(f"no disk {target}")
    cmd = f'qemu-io -d {qdev}/virtio-backend "write -P {pattern:#x} {offset} {length}"'
    out = libvirt_qemu.qemuMonitorCommand(
        dom, cmd, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
    )
    assert "error" not in out.lower(), out


def read_pattern(
    path: str | Path, fmt: str, pattern: int, offset: str, length: str, *, shared: bool = True
) -> bool:
    """Whether ``length`` bytes at ``offset`` of the image all hold ``pattern`` (read
    with its explicit format; ``shared``: beside a QEMU that has it open)."""
    argv = ["qemu-io", "-r", *(["-U"] if shared else []), "-f", fmt]
    res = subprocess.run(
        [*argv, "-c", f"read -P {pattern:#x} {offset} {length}", str(path)],
        capture_output=True,
        text=True,
    )
    out = res.stdout + res.stderr
    return res.returncode == 0 and "verification failed" not in out and "read " in out


def refused(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    for word in words:
        assert word in res.stderr, (word, res.stderr)
