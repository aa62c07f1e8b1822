"""The journal's kill-at-every-boundary matrix, on a FakeLibvirt and real qemu-img files.

The twin of ``tests/libvirtd/test_migrate_files.py::test_kill_at_every_boundary_then_
resume_or_rollback`` without a libvirtd: every step x before/after x resume/rollback, for
a qcow2 root (on a raw ``_base``) migrated ``--to flat`` and a flat root ``--to qcow2``.

The CLI runs in this process with ``obj=Application(libvirt_factory=...)``: every domain
read and definition goes to a :class:`FakeLibvirt` kept in a JSON file (so what a forked,
SIGKILLed migration defined is still there, as in a libvirtd). The read-only scan (persist,
and the inspection ``migrate --to`` starts with) reads the same domain from a libvirt
test-driver node file, shut off; the migration itself never uses that driver.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from storagectl import errors
from storagectl.cli import cli
from storagectl.cli.app import Application
from storagectl.host.libvirt_port import FakeLibvirt, LibvirtPort, SwitchError
from storagectl.migrate.journal import STEPS

MiB = 1 << 20
DISK_RE = re.compile(r"<disk[\s>].*?</disk>", re.DOTALL)
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
#: Nova's Flat images read both layouts below as stored (the format of each file from
#: disk.info); the node's nova.conf is Nova's default (Qcow2), so every move names it
FLAT = ("--assume", "[libvirt] images_type=flat")
#: root format of the instance -> (the migrate arguments, the root after, the retained name)
DIRECTIONS = {
    "qcow2": (("--to", "flat", *FLAT), "raw", "flat", "disk.retained-qcow2"),
    "flat": (("--to", "qcow2", "--disks", "root", *FLAT), "qcow2", "qcow2", "disk.retained-flat"),
}


def sh(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True)


def guest_sha(path: str | Path, fmt: str, scratch: Path) -> str:
    """sha256 of the guest-visible bytes (qemu-img convert -O raw, then hash)."""
    out = scratch / f"sha-{uuidlib.uuid4().hex}.raw"
    sh("qemu-img", "convert", "-f", fmt, "-O", "raw", str(path), str(out))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    return digest


def domain_xml(name: str, uuid: str, disks: list[tuple[str, str, str]], *, node: bool) -> str:
    """A domain as libvirt prints it; ``node``: for a test-driver node file (shut off)."""
    devices = "".join(
        f"    <disk type='file' device='disk'>\n"
        f"      <driver name='qemu' type='{fmt}' cache='none'/>\n"
        f"      <source file='{path}'/>\n"
        f"      <target dev='{dev}' bus='virtio'/>\n"
        f"    </disk>\n"
        for path, fmt, dev in disks
    )
    ns = f" xmlns:test='{TEST_NS}'" if node else ""
    runstate = "  <test:runstate>5</test:runstate>\n" if node else ""
    return (
        f"<domain type='test'{ns}>\n  <name>{name}</name>\n  <uuid>{uuid}</uuid>\n"
        "  <memory unit='KiB'>65536</memory>\n  <os>\n    <type arch='x86_64'>hvm</type>\n"
        f"  </os>\n  <devices>\n{devices}  </devices>\n{runstate}</domain>\n"
    )


class FakeNode:
    """A compute node: instances and nova.conf under ``root``, its domains in a
    FakeLibvirt (``state``) and, for the read-only scan, in a test-driver node file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.instances = root / "instances"
        (self.instances / "_base").mkdir(parents=True)
        self.conf = root / "nova.conf"
        self.conf.write_text(f"[DEFAULT]\nstate_path = {root}\ninstances_path = {self.instances}\n")
        self.node_file = root / "node.xml"
        self.state = root / "libvirt.json"
        self.uri = f"test://{self.node_file}"
        self.domains: list[str] = []
        FakeLibvirt(uri=self.uri, path=self.state)

    def libvirt(self) -> FakeLibvirt:
        return FakeLibvirt(uri=self.uri, path=self.state)

    def app(self) -> Application:
        return Application(libvirt_factory=lambda uri: FakeLibvirt(uri=uri, path=self.state))

    def args(self, *args: str) -> list[str]:
        return [
            "-c",
            self.uri,
            "--nova-conf",
            str(self.conf),
            "--lock-path",
            str(self.root / "locks"),
            "--log-file",
            str(self.root / "storagectl.log"),
            *args,
        ]

    def run(self, *args: str) -> subprocess.CompletedProcess:
        res = CliRunner().invoke(cli, self.args(*args), obj=self.app())
        if res.exception and not isinstance(res.exception, SystemExit):
            raise res.exception
        return subprocess.CompletedProcess(args, res.exit_code, res.stdout, res.stderr)

    def killed(self, *args: str, fault: str) -> subprocess.CompletedProcess:
        """The CLI in a forked child with ``STORAGECTL_FAULT=fault`` (as
        ``tests.migrate_support.Node.killed``); returncode -9 when the hook fired."""
        err = self.root / f"killed-{os.getpid()}.err"
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 70
            try:
                os.environ["STORAGECTL_FAULT"] = fault
                res = CliRunner().invoke(cli, self.args(*args), obj=self.app())
                err.write_text(f"{res.stderr}{res.exception!r}")
                code = res.exit_code
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        text = err.read_text() if err.exists() else ""
        err.unlink(missing_ok=True)
        return subprocess.CompletedProcess(args, code, "", text)

    def add_domain(self, name: str, uuid: str, disks: list[tuple[str, str, str]]) -> None:
        self.domains.append(domain_xml(name, uuid, disks, node=True))
        self.node_file.write_text("<node>\n" + "".join(self.domains) + "</node>\n")
        fake = self.libvirt()
        fake.define(domain_xml(name, uuid, disks, node=False))

    def xml(self, uuid: str) -> str:
        return self.libvirt().persistent_xml(uuid)

    def rescan(self) -> None:
        """The node file (what inspect scans) with the fake's domains as now defined."""
        devices = re.compile(r"<devices>.*</devices>", re.DOTALL)
        for n, dom in enumerate(self.domains):
            uuid = re.search(r"<uuid>(.*?)</uuid>", dom).group(1)
            now = devices.search(self.xml(uuid)).group(0)
            self.domains[n] = devices.sub(lambda _m, now=now: now, dom)
        self.node_file.write_text("<node>\n" + "".join(self.domains) + "</node>\n")

    def record(self, uuid: str) -> dict:
        return yaml.safe_load((self.instances / uuid / "storage.yaml").read_text())


def make_instance(node: FakeNode, root: str, *, size_mib: int = 8, data_mib: int = 2) -> str:
    """A persisted, shut-off instance: root ``qcow2`` (on a raw ``_base`` image) or
    ``flat``, plus a raw ``disk.local`` (vdb); returns its uuid."""
    uuid = str(uuidlib.uuid4())
    d = node.instances / uuid
    d.mkdir()
    disk = d / "disk"
    if root == "qcow2":
        base = node.instances / "_base" / hashlib.sha1(uuid.encode()).hexdigest()
        sh("qemu-img", "create", "-q", "-f", "raw", str(base), str(size_mib * MiB))
        sh("qemu-io", "-f", "raw", "-c", f"write -P 5 0 {data_mib}M", str(base))
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(disk))
        sh("qemu-io", "-f", "qcow2", "-c", "write -P 9 2M 1M", str(disk))
    else:
        sh("qemu-img", "create", "-q", "-f", "raw", str(disk), str(size_mib * MiB))
        sh("qemu-io", "-f", "raw", "-c", f"write -P 7 1M {data_mib}M", str(disk))
    fmt = "qcow2" if root == "qcow2" else "raw"
    local = d / "disk.local"
    sh("qemu-img", "create", "-q", "-f", "raw", str(local), str(4 * MiB))
    (d / "disk.info").write_text(json.dumps({str(disk): fmt, str(local): "raw"}))
    disks = [(str(disk), fmt, "vda"), (str(local), "raw", "vdb")]
    node.add_domain(f"instance-{uuid[:8]}", uuid, disks)
    res = node.run("persist", uuid)
    assert res.returncode == 0, res.stdout + res.stderr
    return uuid


def disk_element(xml: str, target: str) -> tuple[int, int, ET.Element]:
    for m in DISK_RE.finditer(xml):
        el = ET.fromstring(m.group(0))
        if el.find("target").get("dev") == target:
            return m.start(), m.end(), el
    raise AssertionError(f"no disk {target}")


def domain_disk(node: FakeNode, uuid: str, target: str = "vda") -> tuple[str, str]:
    """(source file, driver type) of one file disk in the persistent XML."""
    _, _, el = disk_element(node.xml(uuid), target)
    return el.find("source").get("file"), el.find("driver").get("type")


def without_disk(xml: str, target: str) -> str:
    start, end, _ = disk_element(xml, target)
    return xml[:start] + xml[end:]


def leftovers(node: FakeNode, uuid: str) -> list[str]:
    """Files a migration may leave behind by mistake."""
    return sorted(
        p.name
        for p in (node.instances / uuid).iterdir()
        if p.name.endswith((".migrating", ".rollback")) or p.name.startswith(".")
    )


def snapshot(node: FakeNode, uuid: str) -> dict:
    """Everything a rollback must restore: XML, record, disk.info and the file names."""
    d = node.instances / uuid
    return {
        "xml": node.xml(uuid),
        "record": (d / "storage.yaml").read_bytes(),
        "disk.info": (d / "disk.info").read_bytes(),
        "files": sorted(os.listdir(d)),
    }


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path / "node")


@pytest.mark.parametrize("root", sorted(DIRECTIONS))
@pytest.mark.parametrize("how", ["resume", "rollback"])
@pytest.mark.parametrize("fault", [f"{s}:{p}" for s in STEPS for p in ("before", "after")])
def test_kill_at_every_boundary_then_resume_or_rollback(
    node: FakeNode, tmp_path: Path, fault: str, how: str, root: str
) -> None:
    to_args, after_fmt, after_backend, retained = DIRECTIONS[root]
    uuid = make_instance(node, root)
    d = node.instances / uuid
    before_fmt = "qcow2" if root == "qcow2" else "raw"
    before_sha = guest_sha(d / "disk", before_fmt, tmp_path)
    before = snapshot(node, uuid)
    res = node.killed("migrate", uuid, *to_args, "--yes", fault=fault)
    assert res.returncode == -signal.SIGKILL, res.stderr
    # at the boundary: the domain points at a complete disk with the same data
    path, fmt = domain_disk(node, uuid)
    assert guest_sha(path, fmt, tmp_path) == before_sha, (path, fmt)
    assert (d / "storage.migration.json").exists()
    if fault == "copy:after":  # a new migration is refused while the journal is there
        res = node.run("migrate", uuid, *to_args, "--yes")
        assert res.returncode == 1 and "--resume or --rollback" in res.stderr
        status = node.run("migrate", "--status")
        assert uuid in status.stdout and "copy (after)" in status.stdout
    res = node.run("migrate", f"--{how}", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert not (d / "storage.migration.json").exists()
    assert leftovers(node, uuid) == []
    path, fmt = domain_disk(node, uuid)
    assert guest_sha(path, fmt, tmp_path) == before_sha
    after = snapshot(node, uuid)
    if how == "rollback":
        assert after == before
    else:
        assert (path, fmt) == (str(d / "disk"), after_fmt)
        assert without_disk(after["xml"], "vda") == without_disk(before["xml"], "vda")
        assert node.record(uuid)["disks"][0]["backend"] == after_backend
        assert after["files"] == sorted([*before["files"], retained])


# -- the port itself, and what the fake lets the CLI be tested for -------------------


def test_the_fake_keeps_what_is_defined_byte_for_byte_across_objects(tmp_path: Path) -> None:
    u = "5eed0001-0000-4000-8000-000000000001"
    xml = domain_xml("instance-1", u, [("/x/disk", "raw", "vda")], node=False)
    fake = FakeLibvirt([xml], uri="qemu:///fake", path=tmp_path / "state.json")
    assert isinstance(fake, LibvirtPort)
    again = FakeLibvirt(uri="qemu:///fake", path=tmp_path / "state.json")
    assert again.persistent_xml(u.upper()) == xml and not again.is_active(u)
    assert again.uuid_of("instance-1") == u and [r.uuid for r in again.list_domains()] == [u]
    again.set_active(u)
    assert fake.is_active(u) and again.driver_problem() is None
    with pytest.raises(errors.InstanceNotFound, match="no-such"):
        fake.uuid_of("no-such")
    with pytest.raises(SwitchError, match="libvirt refused the XML"):
        fake.define("<domain><name>instance-1</name><uuid>" + "1" * 32 + "</uuid></domain>")
    with pytest.raises(SwitchError, match="libvirt refused the XML"):
        fake.define("<domain")
    fake.fail("is_active", errors.HostUnreachable(uri=fake.uri, reason="down"))
    with pytest.raises(errors.HostUnreachable):
        fake.is_active(u)
    assert fake.is_active(u)  # once


def test_a_refused_define_at_the_switch_keeps_the_journal_then_rollback(
    node: FakeNode, tmp_path: Path
) -> None:
    uuid = make_instance(node, "qcow2")
    before = snapshot(node, uuid)
    fake = node.libvirt()
    fake.fail("define", SwitchError(instance="domain", reason="libvirt refused the XML: nope"))
    res = CliRunner().invoke(
        cli,
        node.args("migrate", uuid, "--to", "flat", *FLAT, "--yes"),
        obj=Application(libvirt_factory=lambda uri: fake),
    )
    assert res.exit_code == 1, res.output
    assert "failed at switch" in res.stderr and "libvirt refused the XML: nope" in res.stderr
    assert "--resume or --rollback" in res.stderr
    assert (node.instances / uuid / "storage.migration.json").exists()
    # by name: the port resolves it
    res = node.run("migrate", "--rollback", f"instance-{uuid[:8]}", "--yes")
    assert res.returncode == 0, res.stderr
    assert snapshot(node, uuid) == before and leftovers(node, uuid) == []


def test_a_running_domain_is_refused_by_resume(node: FakeNode) -> None:
    uuid = make_instance(node, "flat")
    res = node.killed("migrate", uuid, "--to", "qcow2", "--yes", fault="copy:after")
    assert res.returncode == -signal.SIGKILL, res.stderr
    node.libvirt().set_active(uuid)
    res = node.run("migrate", "--resume", uuid, "--yes")
    assert res.returncode == 1 and "shut it off before resuming" in res.stderr
    node.libvirt().set_active(uuid, False)
    res = node.run("migrate", "--resume", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert domain_disk(node, uuid) == (str(node.instances / uuid / "disk"), "qcow2")


def test_the_application_builds_the_real_port_with_the_connect_timeout() -> None:
    from storagectl.host.libvirt_port import LibvirtDomains

    port = Application(connect_timeout=3.5).libvirt("qemu+ssh://cn7/system")
    assert isinstance(port, LibvirtDomains) and isinstance(port, LibvirtPort)
    assert (port.uri, port.timeout) == ("qemu+ssh://cn7/system", 3.5)
    assert port.driver_problem() is None
    assert Application().libvirt("test:///default").driver_problem() is not None
    port.close()  # never connected: nothing to close
