"""Test environment: a real libvirtd with the QEMU driver on ``qemu:///system``.

The session fixture ``libvirtd`` reuses a daemon that already answers on
``qemu:///system`` with the QEMU driver; otherwise it starts ``virtlogd`` and
``libvirtd`` by hand (there is no systemd here) and stops exactly those two
processes, by pid, at the end of the session. Outside pytest::

    python -m tests.env.libvirtd start   # prints uri, domain type, pids, log dir
    python -m tests.env.libvirtd stop    # stops only what ``start`` started

What starting by hand needs (each step idempotent, done only when missing):

* ``/var/run/libvirt`` and ``/var/log/libvirt`` must exist before libvirtd runs.
* Debian's QEMU driver looks up its compiled-in user *and* group
  ``libvirt-qemu`` before it reads qemu.conf, so ``user =``/``group =`` there
  do not help: the driver fails with "Failed to parse user 'libvirt-qemu'"
  (then "... group 'libvirt-qemu'"), and libvirtd exits with status 0.
  ``ensure_qemu_user`` creates both (user also in ``kvm`` for /dev/kvm), the
  way libvirt-daemon-system's postinst would.
* ``/etc/libvirt/qemu.conf`` is not written on this host (it has no qemu.conf
  at all): with no AppArmor/SELinux in the kernel libvirt picks no MAC driver
  by itself and keeps DAC, so QEMU runs as libvirt-qemu like on a Nova host.
  Only when a MAC is active is ``security_driver = "none"`` appended, and only
  if the file has no ``security_driver`` line. Note that ``"none"`` also turns
  DAC labelling off: QEMU then runs as root (libvirt logs "tainted:
  high-privileges").
* ``virtlogd`` must answer before a domain starts (default ``stdio_handler =
  "logd"``). Both daemons run in the foreground of a new session (not ``-d``)
  so we hold their pids and their stderr lands in ``log_dir``. Harmless errors
  at start: dnsmasq missing, no D-Bus, dmidecode and /dev/mem.
* The first start probes QEMU's capabilities (~8 s, cached afterwards under
  /var/cache/libvirt/qemu/capabilities); later starts take ~2.5 s, of which
  ~2 s is the KVM probe domain (mostly its destroy, see below).

Traps and facts met while writing this (libvirt 9.0.0, QEMU 7.2, Debian 12):

* QEMU runs as libvirt-qemu: pytest's ``tmp_path`` (under the 0700
  /tmp/pytest-of-root) is unreachable for it; use ``libvirt_workdir``.
* DAC chowns the whole disk chain to libvirt-qemu at start but restores only
  the top image at destroy or pivot: a raw backing file (Nova's ``_base``) is
  left owned by libvirt-qemu. A blockCopy destination that libvirt creates is
  mode 0600, owned by libvirt-qemu while running and by root after destroy.
* libvirt-python prints every error to stderr through its default handler even
  when the caller catches the exception; ``_quiet_libvirt`` installs a no-op.
* ``virDomain.metadata(VIR_DOMAIN_METADATA_ELEMENT, ns)`` returns the element
  with its namespace stripped (``<instance><name>``), while the domain XML
  keeps ``nova:`` with ``xmlns:nova`` moved onto ``<metadata>``.
* qemu-img 7.2 refuses ``create -b`` without ``-F`` ("Backing file specified
  without backing format"). An old overlay whose header lacks the backing
  format (made here by patching the header) still starts: libvirt 9.0 probes
  the base and reports it as raw.
* blockCopy on a persistent domain without
  ``VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB`` fails with VIR_ERR_OPERATION_INVALID
  "domain is not transient". With it, the pivot also rewrites the persistent
  definition: the new source, its driver type, and ``<backingStore/>``.
* ``blockJobInfo()`` is no "ready" signal: libvirt reports ``cur = end - 1``
  until QEMU says the mirror is ready. Poll the live XML for
  ``<mirror ready='yes'>`` (as Nova does); see ``wait_mirror_ready``.
* ``<disk type='block'>`` needs a real block device: QEMU's ``host_device``
  driver refuses a regular file at start (the definition itself is accepted).
  With no device-mapper here, Nova's LVM layout can only be imitated with a
  loop device, or with real LVs inside the virtme-ng guest.
* QEMU needs 1-1.8 s to exit on SIGTERM on this host (KVM or TCG, with or
  without libvirt), so every ``destroy()`` costs that much.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest

URI = "qemu:///system"
RUN_DIR = Path("/var/run/libvirt")
DEFAULT_LOG_DIR = Path("/var/log/libvirt")
LIBVIRTD_SOCKET = RUN_DIR / "libvirt-sock"
#: Where a modular daemon (virtqemud) would answer qemu:///system instead.
VIRTQEMUD_SOCKET = RUN_DIR / "virtqemud-sock"
VIRTLOGD_SOCKET = RUN_DIR / "virtlogd-sock"
#: Written by start_libvirtd when it started daemons, so that a later
#: ``python -m tests.env.libvirtd stop`` in another process knows their pids.
STATE_FILE = RUN_DIR / "storagectl-tests-libvirtd.json"
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
#: key -> value appended to qemu.conf only when the file has no line for key.
QEMU_CONF_SETTINGS = {"security_driver": '"none"'}
#: Debian's compiled-in QEMU user and group: the QEMU driver looks both up
#: before it reads qemu.conf, so setting user/group there does not help.
QEMU_USER = "libvirt-qemu"
QEMU_GROUP = "libvirt-qemu"
KVM_GROUP = "kvm"
NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"
START_DEADLINE = 30.0
WORKDIR_PARENT = Path("/var/tmp")


_MARKER = "--- storagectl tests started at "


class LibvirtdUnavailable(RuntimeError):
    """libvirtd could not be found or started; the message carries the log tail."""


def _quiet_libvirt() -> None:
    # The default handler prints every libvirt error to stderr, including the
    # expected ones from probing; the exceptions themselves are unaffected.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@dataclass
class Libvirtd:
    """A libvirtd answering on ``uri``; ``define`` tracks domains for cleanup."""

    uri: str
    domain_type: str
    started_here: bool
    log_dir: Path | None = None
    pids: dict[str, int] = field(default_factory=dict)
    start_seconds: float = 0.0
    _conn: libvirt.virConnect | None = field(default=None, repr=False)
    _tracked: list[str] = field(default_factory=list, repr=False)

    def connect(self) -> libvirt.virConnect:
        """The shared read-write connection, opened on first use."""
        if self._conn is None or not self._conn.isAlive():
            self._conn = libvirt.open(self.uri)
        return self._conn

    def define(self, xml: str) -> libvirt.virDomain:
        """``virsh define``: persistent domain, destroyed and undefined at teardown."""
        dom = self.connect().defineXML(xml)
        self._tracked.append(dom.UUIDString())
        return dom

    def cleanup_domains(self) -> list[str]:
        """Destroy and undefine every domain ``define`` made; return their names."""
        removed = []
        conn = self.connect() if self._tracked else None
        while self._tracked:
            uuid = self._tracked.pop()
            try:
                dom = conn.lookupByUUIDString(uuid)
            except libvirt.libvirtError:
                continue  # the test already removed it
            removed.append(dom.name())
            remove_domain(dom)
        return removed

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None


def remove_domain(dom: libvirt.virDomain) -> None:
    """``virsh destroy`` (if running) then ``virsh undefine`` (if persistent)."""
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isPersistent():
            dom.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
            )


# --------------------------------------------------------------------------- domain XML


def minimal_domain_xml(
    name: str, uuid: str, disks: list[tuple[str, str, str]], domain_type: str
) -> str:
    """A firmware-only guest (SeaBIOS, no OS) that keeps its disks open.

    ``disks`` holds ``(source_path, driver_type, target_dev)``; a path that is a
    block device becomes ``<disk type='block'>`` (Nova's LVM layout), anything
    else ``<disk type='file'>``. All disks are virtio. The ``<metadata>`` carries
    a ``nova:instance`` element shaped like the one Nova writes.
    """
    dom = ET.Element("domain", type=domain_type)
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "uuid").text = uuid
    ET.register_namespace("nova", NOVA_NS)
    meta = ET.SubElement(dom, "metadata")
    inst = ET.SubElement(meta, f"{{{NOVA_NS}}}instance")
    ET.SubElement(inst, f"{{{NOVA_NS}}}package", version="27.1.0")
    ET.SubElement(inst, f"{{{NOVA_NS}}}name").text = name
    ET.SubElement(inst, f"{{{NOVA_NS}}}creationTime").text = time.strftime(
        "%Y-%m-%d %H:%M:%S", time.gmtime()
    )
    flavor = ET.SubElement(inst, f"{{{NOVA_NS}}}flavor", name="m1.tiny")
    for tag, value in (("memory", "64"), ("disk", "1"), ("swap", "0"), ("vcpus", "1")):
        ET.SubElement(flavor, f"{{{NOVA_NS}}}{tag}").text = value
    owner = ET.SubElement(inst, f"{{{NOVA_NS}}}owner")
    ET.SubElement(owner, f"{{{NOVA_NS}}}user", uuid="0" * 32).text = "admin"
    ET.SubElement(owner, f"{{{NOVA_NS}}}project", uuid="1" * 32).text = "admin"
    ET.SubElement(inst, f"{{{NOVA_NS}}}root", type="image", uuid=str(uuidlib.UUID(int=0)))
    ET.SubElement(dom, "memory", unit="MiB").text = "64"
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "boot", dev="hd")
    ET.SubElement(ET.SubElement(dom, "features"), "acpi")
    ET.SubElement(dom, "clock", offset="utc")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    for source, driver_type, target in disks:
        is_block = _is_block_device(source)
        disk = ET.SubElement(devices, "disk", type="block" if is_block else "file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type=driver_type)
        ET.SubElement(disk, "source", **({"dev": source} if is_block else {"file": source}))
        ET.SubElement(disk, "target", dev=target, bus="virtio")
    ET.SubElement(devices, "memballoon", model="none")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return path.startswith("/dev/")


def disk_source(xml: str, target_dev: str) -> str | None:
    """The ``<source file=|dev=>`` of the disk with ``<target dev=target_dev>``."""
    for disk in ET.fromstring(xml).iter("disk"):
        target = disk.find("target")
        if target is not None and target.get("dev") == target_dev:
            source = disk.find("source")
            if source is None:
                return None
            return source.get("file") or source.get("dev")
    return None


def wait_mirror_ready(dom: libvirt.virDomain, target_dev: str, timeout: float = 60.0) -> None:
    """Poll the live XML until ``<disk><mirror ready='yes'>`` appears for the disk.

    Live XML during a copy (``virsh dumpxml DOM``)::

        <disk type='file' device='disk'>
          <source file='/var/tmp/x/disk' index='2'/>
          <mirror type='file' job='copy' ready='yes'>
            <format type='raw'/><source file='/var/tmp/x/disk.raw' index='3'/>
          </mirror>
          <target dev='vda' bus='virtio'/>
    """
    deadline = time.monotonic() + timeout
    while True:
        for disk in ET.fromstring(dom.XMLDesc(0)).iter("disk"):
            target = disk.find("target")
            mirror = disk.find("mirror")
            if target is not None and target.get("dev") == target_dev and mirror is not None:
                if mirror.get("ready") == "yes":
                    return
                if mirror.get("ready") == "abort":
                    raise RuntimeError(f"block copy of {target_dev} aborted: {dom.XMLDesc(0)}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"block copy of {target_dev} not ready after {timeout}s: "
                f"{dom.blockJobInfo(target_dev, 0)}"
            )
        time.sleep(0.05)


# --------------------------------------------------------------------------- daemons


def _socket_answers(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def qemu_driver_answers(uri: str = URI) -> bool:
    """True when ``virsh -c URI version`` would work and the driver is QEMU."""
    if uri == URI and not (_socket_answers(LIBVIRTD_SOCKET) or _socket_answers(VIRTQEMUD_SOCKET)):
        return False
    _quiet_libvirt()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    try:
        return conn.getType() == "QEMU"
    finally:
        conn.close()


def mac_enabled() -> bool:
    """True if AppArmor or SELinux is active in this kernel (libvirt would use it)."""
    apparmor = Path("/sys/module/apparmor/parameters/enabled")
    with contextlib.suppress(OSError):
        if apparmor.read_text().strip().upper().startswith("Y"):
            return True
    return Path("/sys/fs/selinux/enforce").exists()


def ensure_qemu_conf(path: Path = QEMU_CONF) -> list[str]:
    """Append each QEMU_CONF_SETTINGS key that has no line in ``path``; return the lines.

    Called only when ``mac_enabled()``: without AppArmor/SELinux libvirt already
    picks no MAC driver and keeps DAC (QEMU as libvirt-qemu), like a Nova host.
    """
    text = path.read_text() if path.exists() else ""
    present = set()
    for line in text.splitlines():
        key, sep, _ = line.strip().partition("=")
        if sep and not key.startswith("#"):
            present.add(key.strip())
    added = [f"{k} = {v}" for k, v in QEMU_CONF_SETTINGS.items() if k not in present]
    if added:
        path.parent.mkdir(parents=True, exist_ok=True)
        block = "# added by storagectl tests/env/libvirtd.py (no libvirt-qemu user here)\n"
        if text and not text.endswith("\n"):
            text += "\n"
        path.write_text(text + block + "\n".join(added) + "\n")
    return added


def ensure_qemu_user(
    user: str = QEMU_USER, group: str = QEMU_GROUP, kvm_group: str = KVM_GROUP
) -> list[str]:
    """Create QEMU's compiled-in user and group if absent; return what was created.

    The user also joins ``kvm_group`` so QEMU can open /dev/kvm (root:kvm 0660),
    as on a Debian host with libvirt-daemon-system installed.
    """
    created = []
    for name in (group, kvm_group):
        try:
            grp.getgrnam(name)
        except KeyError:
            subprocess.run(["groupadd", "--system", name], check=True)
            created.append(f"group {name}")
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--gid",
                group,
                "--groups",
                kvm_group,
                "--no-create-home",
                "--home-dir",
                "/var/lib/libvirt",
                "--shell",
                "/usr/sbin/nologin",
                user,
            ],
            check=True,
        )
        created.append(f"user {user}")
    return created


def _tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines written since the last ``_spawn`` marker."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.rpartition(_MARKER)[2].splitlines()[-lines:])


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen:
    binary = shutil.which(argv[0]) or f"/usr/sbin/{argv[0]}"
    if not os.path.exists(binary):
        raise LibvirtdUnavailable(
            f"{argv[0]} not found: install libvirt-daemon and libvirt-daemon-driver-qemu"
        )
    env = dict(os.environ, LIBVIRT_LOG_OUTPUTS="3:stderr")
    with open(log_path, "ab") as log:
        log.write(f"{_MARKER}{time.ctime()} {' '.join(argv)}\n".encode())
        log.flush()
        # Not -d: running in the foreground of a new session gives us the pid
        # directly and keeps its stderr in our log; it survives our exit the same.
        return subprocess.Popen(
            [binary, *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )


def _wait_until(
    check: Callable[[], bool], proc: subprocess.Popen, what: str, log_path: Path
) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while not check():
        if proc.poll() is not None:
            raise LibvirtdUnavailable(
                f"{what} exited with status {proc.returncode} before answering; "
                f"last lines of {log_path}:\n{_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise LibvirtdUnavailable(
                f"{what} did not answer within {START_DEADLINE:.0f}s; "
                f"last lines of {log_path}:\n{_tail(log_path)}"
            )
        time.sleep(0.1)


def _probe_domain_type(conn: libvirt.virConnect) -> str:
    """ "kvm" if a firmware-only KVM guest really runs here, else "qemu" (TCG).

    The capabilities XML only says QEMU was built with KVM and /dev/kvm opened;
    starting a tiny transient domain proves it (about 0.3 s).
    """
    caps = ET.fromstring(conn.getCapabilities())
    kvm_listed = any(
        d.get("type") == "kvm"
        for guest in caps.iter("guest")
        if (arch := guest.find("arch")) is not None and arch.get("name") == "x86_64"
        for d in arch.iter("domain")
    )
    if not kvm_listed:
        return "qemu"
    name = f"storagectl-kvm-probe-{os.getpid()}"
    _quiet_libvirt()
    try:
        dom = conn.createXML(minimal_domain_xml(name, str(uuidlib.uuid4()), [], "kvm"), 0)
    except libvirt.libvirtError:
        return "qemu"
    try:
        time.sleep(0.2)
        state = dom.state()[0]
    finally:
        remove_domain(dom)
    return "kvm" if state == libvirt.VIR_DOMAIN_RUNNING else "qemu"


def start_libvirtd(log_dir: Path | None = None) -> Libvirtd:
    """Use the libvirtd answering on qemu:///system, or start virtlogd + libvirtd.

    Raises LibvirtdUnavailable (with the log tail) if it does not answer in time.
    """
    began = time.monotonic()
    _quiet_libvirt()
    if qemu_driver_answers(URI):
        daemon = Libvirtd(URI, "", started_here=False)
        daemon.domain_type = _probe_domain_type(daemon.connect())
        daemon.start_seconds = time.monotonic() - began
        return daemon

    log_dir = Path(log_dir) if log_dir else DEFAULT_LOG_DIR
    for directory in (RUN_DIR, DEFAULT_LOG_DIR, log_dir):
        directory.mkdir(parents=True, exist_ok=True)
    if mac_enabled():
        ensure_qemu_conf()
    ensure_qemu_user()
    pids: dict[str, int] = {}
    try:
        if not _socket_answers(VIRTLOGD_SOCKET):
            log = log_dir / "virtlogd.log"
            proc = _spawn(["virtlogd"], log)
            pids["virtlogd"] = proc.pid
            _wait_until(lambda: _socket_answers(VIRTLOGD_SOCKET), proc, "virtlogd", log)
        log = log_dir / "libvirtd.log"
        proc = _spawn(["libvirtd"], log)
        pids["libvirtd"] = proc.pid
        _wait_until(qemu_driver_answers, proc, "libvirtd (QEMU driver)", log)
    except BaseException:
        _stop_pids(pids)
        raise
    daemon = Libvirtd(URI, "", started_here=True, log_dir=log_dir, pids=pids)
    daemon.domain_type = _probe_domain_type(daemon.connect())
    daemon.start_seconds = time.monotonic() - began
    STATE_FILE.write_text(
        json.dumps({"pids": pids, "log_dir": str(log_dir), "domain_type": daemon.domain_type})
    )
    return daemon


def _process_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _stop_pids(pids: dict[str, int], timeout: float = 15.0) -> None:
    # libvirtd first: it talks to virtlogd while shutting down.
    for name in ("libvirtd", "virtlogd"):
        pid = pids.get(name)
        # Only signal the pid if it still is the daemon we started (pid reuse).
        if pid is None or _process_name(pid) != name:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _process_name(pid) == name and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
            time.sleep(0.05)
        if _process_name(pid) == name:
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def restart_libvirtd(d: Libvirtd, log_dir: Path | None = None) -> None:
    """Stop libvirtd (SIGTERM; running guests live on) and start it again, as a package
    upgrade or an operator does; virtlogd stays. The new daemon replaces the old one in
    ``d.pids`` so that a session that started it stops it."""
    d.close()
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    for pid in pids:  # one libvirtd per host
        if _process_name(pid) == "libvirtd":
            _stop_pids({"libvirtd": pid})
    log_dir = Path(log_dir or d.log_dir or DEFAULT_LOG_DIR)
    log = log_dir / "libvirtd.log"
    proc = _spawn(["libvirtd"], log)
    _wait_until(qemu_driver_answers, proc, "libvirtd (QEMU driver)", log)
    if d.started_here:
        d.pids["libvirtd"] = proc.pid


def stop_libvirtd(d: Libvirtd) -> None:
    """Remove the tracked domains; stop the daemons only if ``d`` started them."""
    try:
        d.cleanup_domains()
    finally:
        d.close()
        if d.started_here:
            _stop_pids(d.pids)
            with contextlib.suppress(FileNotFoundError):
                STATE_FILE.unlink()


# --------------------------------------------------------------------------- pytest


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Libvirtd]:
    """A libvirtd with the QEMU driver on qemu:///system for the whole session."""
    try:
        daemon = start_libvirtd(tmp_path_factory.mktemp("libvirtd-logs"))
    except LibvirtdUnavailable as exc:
        pytest.fail(f"real libvirtd unavailable: {exc}", pytrace=False)
    yield daemon
    stop_libvirtd(daemon)


@pytest.fixture
def libvirt_workdir() -> Iterator[Path]:
    """An empty 0755 directory under /var/tmp that QEMU can reach as any user."""
    path = Path(tempfile.mkdtemp(prefix="storagectl-libvirtd-", dir=WORKDIR_PARENT))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.env.libvirtd", description=__doc__)
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--log-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.action == "start":
        try:
            daemon = start_libvirtd(args.log_dir)
        except LibvirtdUnavailable as exc:
            print(f"--> LibvirtdUnavailable: {exc}", file=sys.stderr)
            return 1
        daemon.close()
        how = "started" if daemon.started_here else "already running, reused"
        print(f"libvirtd {how}: uri={daemon.uri} domain_type={daemon.domain_type}")
        print(f"pids={daemon.pids} log_dir={daemon.log_dir} ({daemon.start_seconds:.2f}s)")
        return 0
    if not STATE_FILE.exists():
        print(f"nothing to stop: {STATE_FILE} absent (no daemon started by `start`)")
        return 0
    state = json.loads(STATE_FILE.read_text())
    stop_libvirtd(Libvirtd(URI, state["domain_type"], True, pids=state["pids"]))
    print(f"stopped {state['pids']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
