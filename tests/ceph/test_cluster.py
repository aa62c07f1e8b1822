"""The test-cluster environment itself: a second cluster beside the session's one.

Started by a child process that exits without stopping it (as a SIGKILLed test
session would), it must run on its own port, fail a ping promptly once its OSD
is dead, be reaped by ``reap_orphans`` and leave nothing behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storagectl import errors
from storagectl.backends.rbd import RBD
from storagectl.host.process import Runner
from tests.env.ceph import CephCluster, daemon_pids_for_conf, reap_orphans

REPO = Path(__file__).resolve().parents[2]


def test_orphaned_cluster_osd_down_ping_and_reaping(
    ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    root = tmp_path / "orphan"
    script = "import sys; from tests.env.ceph import start_cluster; start_cluster(sys.argv[1])"
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script, str(root)], check=True, cwd=REPO, timeout=90)
    startup = time.monotonic() - started
    cluster = CephCluster.at(root)
    try:
        pids = daemon_pids_for_conf(cluster.conf)
        assert len(pids) == 2, pids
        assert ceph_cluster.conf.read_text() != cluster.conf.read_text()
        assert startup < 30, f"start took {startup:.1f}s"

        rbd = RBD(
            Runner(), pool="vms", ceph_conf=str(cluster.conf), user="admin", connect_timeout=2
        )
        rbd.ping()
        osd_pid = int((root / "run" / "osd.0.pid").read_text())
        os.kill(osd_pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(errors.CephUnreachable, match=r"\(110\) Connection timed out"):
            rbd.ping()  # the mon still answers; the listing times out on the OSD
        assert time.monotonic() - t0 < 8

        reaped = reap_orphans()
        assert set(pids) - {osd_pid} <= set(reaped)  # the mon; the OSD is dead already
        assert daemon_pids_for_conf(cluster.conf) == []
        assert daemon_pids_for_conf(ceph_cluster.conf) != []  # ours is untouched
    finally:
        cluster.stop()
    assert not root.exists()


def test_start_refuses_a_root_that_holds_a_cluster(ceph_cluster: CephCluster) -> None:
    again = CephCluster.at(ceph_cluster.root)
    with pytest.raises(RuntimeError, match="already holds a cluster"):
        again.start()
    assert len(daemon_pids_for_conf(ceph_cluster.conf)) == 2
