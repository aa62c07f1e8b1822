"""Test environment: a real single-node Ceph cluster on loopback.

One monitor and one ``memstore`` OSD (no disks, no mgr), cephx on, listening on a
free port of 127.0.0.1, every path (conf, keyrings, mon/osd data, admin sockets,
pid files, logs) inside one directory. Up and answering ``rbd ls`` in ~10 s.

Used three ways:

* the session fixture ``ceph_cluster`` (started on first use, stopped at the end);
* ``start_cluster(root)`` from Python;
* ``python -m tests.env.ceph start DIR`` (prints the conf path and leaves the
  daemons running, for the demo and the benchmarks) / ``... stop DIR``.

The daemons run in Ceph's own daemon mode (they fork away and write pid files), so
they outlive the process that started them; ``stop`` kills them by the pids from
their pid files and from a /proc scan for processes started with *this* conf.
Daemons left by a test session that was SIGKILLed are reaped at the next session
start: the conf carries the pid of the session that owns it.

Test-environment code: uses subprocess directly, not storagectl's Runner.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.env.procs import alive, processes

MEMSTORE_BYTES = 1 << 30  # RAM-backed OSD capacity; 1 GiB is plenty for tests
PG_NUM = 8
START_TIMEOUT = 60.0  # seconds for the whole bootstrap before we give up
CLIENT_TIMEOUT = 10  # seconds for each bootstrap client command to reach the mon
#: Multiplies every timeout here: the virtme-ng guest (TCG, ~10x slower) sets it.
TIME_FACTOR_ENV = "STORAGECTL_TEST_TIME_FACTOR"


def time_factor() -> float:
    try:
        return max(1.0, float(os.environ.get(TIME_FACTOR_ENV, "1")))
    except ValueError:
        return 1.0


OWNER_MARKER = "# storagectl-test-cluster owner_pid="
# Everything start() creates under root; stop() removes exactly these.
_STATE = (
    "ceph.conf",
    "ceph.client.admin.keyring",
    "mon.keyring",
    "monmap",
    "mon",
    "osd",
    "run",
    "log",
    "crash",
)
_DAEMONS = ("ceph-mon", "ceph-osd")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class CephCluster:
    """A one-mon, one-memstore-OSD cluster whose state lives under ``root``."""

    root: Path
    conf: Path
    keyring: Path
    user: str = "admin"
    pool: str = "vms"
    port: int = 0
    fsid: str = ""
    #: pid written into the conf; 0 means "left running on purpose" (CLI start).
    owner_pid: int = field(default_factory=os.getpid)
    startup_seconds: float = 0.0

    @classmethod
    def at(cls, root: Path, pool: str = "vms", owner_pid: int | None = None) -> CephCluster:
        root = Path(root).resolve()
        return cls(
            root=root,
            conf=root / "ceph.conf",
            keyring=root / "ceph.client.admin.keyring",
            pool=pool,
            owner_pid=os.getpid() if owner_pid is None else owner_pid,
        )

    # -- public -----------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment that points every Ceph tool (and librados in qemu) here."""
        return {"CEPH_CONF": str(self.conf)}

    def client_args(self) -> list[str]:
        """``--conf``/``--id`` arguments for a ceph/rbd/rados command line."""
        return ["--conf", str(self.conf), "--id", self.user]

    def start(self) -> None:
        """Bootstrap from nothing: keys, monmap, mon, OSD, pool; wait for ``rbd ls``."""
        started = time.monotonic()
        if self.conf.exists():
            raise RuntimeError(f"{self.root} already holds a cluster; stop it first")
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("mon", "osd", "run", "log", "crash"):
            (self.root / sub).mkdir(exist_ok=True)
        self.port = free_port()
        self.fsid = str(uuid.uuid4())
        self.conf.write_text(self._conf_text())
        try:
            self._make_keys()
            self._start_mon()
            self._start_osd()
            self._create_pool()
            self._wait_for_rbd(started + START_TIMEOUT * time_factor())
        except Exception as exc:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"Ceph test cluster failed to start: {exc}\n{tail}") from exc
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Kill this cluster's daemons (TERM, then KILL) and remove its state."""
        pids = set(self._pids_from_files()) | set(daemon_pids_for_conf(self.conf))
        # SIGKILL, not SIGTERM: the state is thrown away, so there is nothing to
        # flush, and a TERMed OSD whose mon is gone waits 5 s
        # (osd_mon_shutdown_timeout) to say goodbye.
        kill_pids(pids, sig=signal.SIGKILL)
        for name in _STATE:
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()
        with contextlib.suppress(OSError):
            self.root.rmdir()  # only if nothing else lives there

    def log_tail(self, lines: int = 25) -> str:
        """Last lines of the mon and OSD logs, for failure messages."""
        out = []
        for log in sorted((self.root / "log").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(out) or f"(no logs under {self.root / 'log'})"

    def ceph(self, *args: str, timeout: float = 30, input: bytes | None = None) -> str:
        """Run the ``ceph`` CLI against this cluster and return stdout."""
        cmd = [
            "ceph",
            *self.client_args(),
            "--connect-timeout",
            str(int(CLIENT_TIMEOUT * time_factor())),
            *args,
        ]
        return _run(cmd, timeout=timeout, input=input)

    def rbd(self, *args: str, timeout: float = 60) -> str:
        """Run the ``rbd`` CLI against this cluster and return stdout."""
        cmd = ["rbd", *self.client_args(), "--client_mount_timeout",
               str(int(CLIENT_TIMEOUT * time_factor())), *args]  # fmt: skip
        return _run(cmd, timeout=timeout)

    def qemu_uri(self, image: str) -> str:
        return f"rbd:{self.pool}/{image}:id={self.user}:conf={self.conf}"

    # -- bootstrap steps --------------------------------------------------------

    def _conf_text(self) -> str:
        r = self.root
        # Daemon-only paths go in [mon]/[osd]: in [global] every rbd client would
        # fight over one admin socket and pid file.
        return f"""{OWNER_MARKER}{self.owner_pid}
[global]
fsid = {self.fsid}
mon host = [v2:127.0.0.1:{self.port}]
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind msgr2 = true
run dir = {r}/run
crash dir = {r}/crash
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail crit = 1
mon data avail warn = 2

[mon]
mon data = {r}/mon/$cluster-$id
keyring = $mon_data/keyring
admin socket = {r}/run/$name.asok
pid file = {r}/run/$name.pid
log file = {r}/log/$name.log
mon cluster log file = {r}/log/cluster.log

[osd]
osd data = {r}/osd/$cluster-$id
# The OSD must find its own key here, or it dies with "failed to fetch mon config".
keyring = $osd_data/keyring
osd objectstore = memstore
memstore device bytes = {MEMSTORE_BYTES}
admin socket = {r}/run/$name.asok
pid file = {r}/run/$name.pid
log file = {r}/log/$name.log

[client]
keyring = {self.keyring}
"""

    def _make_keys(self) -> None:
        mon_keyring = self.root / "mon.keyring"
        _run(["ceph-authtool", "--create-keyring", str(mon_keyring), "--gen-key", "-n", "mon.",
              "--cap", "mon", "allow *"])  # fmt: skip
        _run(["ceph-authtool", "--create-keyring", str(self.keyring), "--gen-key",
              "-n", f"client.{self.user}", "--cap", "mon", "allow *", "--cap", "osd", "allow *",
              "--cap", "mgr", "allow *", "--cap", "mds", "allow *"])  # fmt: skip
        # The mon's initial keyring must already know client.admin.
        _run(["ceph-authtool", str(mon_keyring), "--import-keyring", str(self.keyring)])
        _run(["monmaptool", "--create", "--fsid", self.fsid,
              "--addv", "a", f"[v2:127.0.0.1:{self.port}]", str(self.root / "monmap")])  # fmt: skip

    def _start_mon(self) -> None:
        conf = str(self.conf)
        _run(["ceph-mon", "--conf", conf, "--mkfs", "-i", "a",
              "--monmap", str(self.root / "monmap"),
              "--keyring", str(self.root / "mon.keyring")])  # fmt: skip
        # Daemon mode: returns once the mon has forked away and written its pid file.
        _run(["ceph-mon", "--conf", conf, "-i", "a"], timeout=30)

    def _start_osd(self) -> None:
        osd_uuid = str(uuid.uuid4())
        osd_id = self.ceph("osd", "new", osd_uuid).strip()
        data = self.root / "osd" / f"ceph-{osd_id}"
        data.mkdir(parents=True, exist_ok=True)
        keyring = data / "keyring"
        _run(
            ["ceph-authtool", "--create-keyring", str(keyring), "--gen-key", "-n", f"osd.{osd_id}"]
        )
        self.ceph("auth", "add", f"osd.{osd_id}", "osd", "allow *", "mon", "allow profile osd",
                  "mgr", "allow profile osd", "-i", str(keyring))  # fmt: skip
        conf = str(self.conf)
        _run(["ceph-osd", "--conf", conf, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid],
             timeout=60)  # fmt: skip
        _run(["ceph-osd", "--conf", conf, "-i", osd_id], timeout=60)

    def _create_pool(self) -> None:
        self.ceph("osd", "pool", "create", self.pool, str(PG_NUM), str(PG_NUM), "replicated")
        self.ceph("osd", "pool", "application", "enable", self.pool, "rbd")

    def _wait_for_rbd(self, deadline: float) -> None:
        # `rbd ls` reads the pool's rbd_directory object, so it answers only once
        # the OSD is up and the pool's PGs are active.
        last = ""
        while time.monotonic() < deadline:
            try:
                self.rbd("ls", "--pool", self.pool, timeout=15)
                return
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                last = str(exc)
            time.sleep(0.3)
        raise RuntimeError(f"`rbd ls {self.pool}` did not answer in time: {last}")

    def _pids_from_files(self) -> list[int]:
        pids = []
        for pid_file in (self.root / "run").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(pid_file.read_text().strip()))
        return pids


def start_cluster(root: Path, pool: str = "vms") -> CephCluster:
    """Start a fresh cluster under ``root``; raise RuntimeError with log tails on failure."""
    cluster = CephCluster.at(root, pool=pool)
    cluster.start()
    return cluster


# -- process handling ----------------------------------------------------------


def _run(cmd: list[str], timeout: float = 30, input: bytes | None = None) -> str:
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            timeout=timeout * time_factor(),
            input=input,
            stdin=None if input else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise RuntimeError(
            f"{cmd[0]} is not installed (apt-get install ceph-mon ceph-osd ceph-common)"
        ) from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err}")
    return proc.stdout.decode(errors="replace")


def daemon_pids_for_conf(conf: Path) -> list[int]:
    """Pids of ceph-mon/ceph-osd processes started with ``--conf CONF``."""
    want = str(conf)
    return [
        pid for pid, argv in processes() if os.path.basename(argv[0]) in _DAEMONS and want in argv
    ]


def kill_pids(
    pids: set[int] | list[int], sig: signal.Signals = signal.SIGTERM, grace: float = 5.0
) -> None:
    """Send ``sig`` to each pid, wait up to ``grace`` seconds, then SIGKILL the survivors."""
    pids = {p for p in pids if p > 1 and alive(p)}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if alive(p)}
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if alive(p)}
        time.sleep(0.05)


def reap_orphans() -> list[int]:
    """Kill daemons of test clusters whose owning test session has died.

    Only processes whose conf carries our owner marker with a pid that no longer
    runs are touched; clusters started from the command line (owner 0) are kept.
    """
    orphans: list[int] = []
    for pid, argv in processes():
        if os.path.basename(argv[0]) not in _DAEMONS or "--conf" not in argv:
            continue
        conf = Path(argv[argv.index("--conf") + 1])
        try:
            first = conf.read_text().splitlines()[0]
        except (OSError, IndexError):
            first = ""
        if not first.startswith(OWNER_MARKER):
            continue
        owner = int(first[len(OWNER_MARKER) :] or 0)
        if owner and not alive(owner):
            orphans.append(pid)
    kill_pids(orphans, sig=signal.SIGKILL)
    return orphans


def hold_open(
    uri: str, watched: Callable[[], bool], *, ms: int, timeout: float = 30
) -> subprocess.Popen:
    """A qemu-io that opens the RBD image ``uri`` read-write and sleeps ``ms``
    milliseconds - holding a watch on it, as a copy's qemu-img does - returned once
    ``watched()`` sees the watch. The caller ends it: ``kill()`` leaves a dead client's
    watch until the OSD expires it; waiting lets qemu-io close the image cleanly."""
    holder = subprocess.Popen(
        ["qemu-io", "-f", "raw", "-c", f"sleep {ms}", uri],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while not watched():
            assert holder.poll() is None and time.monotonic() < deadline, f"qemu-io: {uri}"
            time.sleep(0.1)
    except BaseException:
        holder.kill()
        holder.wait()
        raise
    return holder


# -- pytest --------------------------------------------------------------------


@contextlib.contextmanager
def rbd_sandbox(
    cluster: CephCluster,
    root: Path,
    *,
    instances: int,
    seed: int,
    kinds: tuple[str, ...],
    virtual_size: int = 64 << 20,
    also_remove: tuple[str, ...] = (),
) -> Iterator[tuple[object, object]]:
    """A sandbox node whose RBD instances live in ``cluster``'s pool: (Sandbox, RBD).

    The cluster is shared by the whole session, so on the way out every image of the
    sandbox (and any image whose name starts with one of ``also_remove``: images a test
    made by hand) is removed, snapshots first.
    """
    from storagectl.backends.rbd import RBD
    from storagectl.host.process import Runner
    from storagectl.sandbox import SandboxSpec, create_sandbox

    runner = Runner()
    rbd = RBD(runner, pool=cluster.pool, ceph_conf=str(cluster.conf), user=cluster.user)
    spec = SandboxSpec(
        root=root,
        instances=instances,
        seed=seed,
        kinds=kinds,
        rbd_pool=cluster.pool,
        ceph_conf=str(cluster.conf),
        rbd_user=cluster.user,
        virtual_size=virtual_size,
    )
    sandbox = create_sandbox(spec, runner)
    mine = {d.image for i in sandbox.instances for d in i.disks if d.backend == "rbd"}
    try:
        yield sandbox, rbd
    finally:
        for image in rbd.list_images():
            if image in mine or image.startswith(also_remove or ("\0",)):
                for snap in rbd.list_snapshots(image):
                    cluster.rbd("snap", "rm", f"{cluster.pool}/{image}@{snap}")
                rbd.remove(image)


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    """A running cluster for the whole session (started on first use)."""
    reap_orphans()
    cluster = start_cluster(tmp_path_factory.mktemp("ceph"))
    try:
        yield cluster
    finally:
        cluster.stop()


# -- command line --------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.env.ceph", description=__doc__.split("\n")[0]
    )
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("dir", type=Path)
    parser.add_argument("--pool", default="vms")
    args = parser.parse_args(argv)
    if args.action == "start":
        cluster = CephCluster.at(args.dir, pool=args.pool, owner_pid=0)
        cluster.start()
        print(cluster.conf)
        print(f"started in {cluster.startup_seconds:.1f}s; port {cluster.port}", file=sys.stderr)
    else:
        cluster = CephCluster.at(args.dir, pool=args.pool)
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
