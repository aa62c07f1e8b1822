"""The RBD backend against the real single-node test cluster."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from storagectl import errors
from storagectl.backends.rbd import RBD
from storagectl.host.process import Runner
from tests.env.ceph import CephCluster, free_port, hold_open

MiB = 1024 * 1024


@pytest.fixture
def rbd(ceph_cluster: CephCluster) -> RBD:
    return RBD(
        Runner(),
        pool=ceph_cluster.pool,
        ceph_conf=str(ceph_cluster.conf),
        user=ceph_cluster.user,
        connect_timeout=5,
    )


@pytest.fixture
def name() -> str:
    """A fresh image name: the cluster is shared by the whole session."""
    return RBD.volume_name(str(uuid.uuid4()), "disk")


def test_create_info_list_remove(rbd: RBD, name: str) -> None:
    assert rbd.exists(name) is False
    created = rbd.create(name, 16 * MiB)
    assert (created.pool, created.name, created.size, created.parent) == (
        "vms",
        name,
        16 * MiB,
        None,
    )
    assert "layering" in created.features
    assert rbd.info(name) == created
    assert rbd.exists(name) is True
    assert name in rbd.list_images()

    rbd.remove(name)
    assert rbd.info(name) is None
    assert name not in rbd.list_images()


def test_create_odd_byte_size_is_exact(rbd: RBD, name: str) -> None:
    image = rbd.create(name, 1000)
    assert image.size == 1000
    rbd.remove(name)


def test_create_existing_image_is_an_error(rbd: RBD, name: str) -> None:
    rbd.create(name, MiB)
    with pytest.raises(errors.BackendError, match=f"vms/{name}.*File exists"):
        rbd.create(name, MiB)
    rbd.remove(name)


def test_remove_waits_out_the_watch_of_a_killed_writer(rbd: RBD, name: str) -> None:
    """A writer killed with the image open (a qemu-img copy killed on a timeout) leaves
    its watch behind until the OSD expires it (osd_client_watch_timeout, 30 s): a plain
    removal is refused naming the watcher; one told to wait succeeds once it expires."""
    rbd.create(name, MiB)
    holder = hold_open(rbd.qemu_uri(name), lambda: bool(rbd.watchers(name)), ms=120000)
    try:
        watchers = rbd.watchers(name)
    finally:
        holder.kill()
        holder.wait()
    killed_at = time.monotonic()
    with pytest.raises(errors.BackendError, match="still has it open") as exc:
        rbd.remove(name)
    assert f"client {watchers[0]}" in str(exc.value)
    assert rbd.exists(name)

    rbd.remove(name, stale_watch_wait=60)
    waited = time.monotonic() - killed_at
    assert rbd.info(name) is None
    assert 20 < waited < 60, waited  # the OSD expired the watch, ~30 s after the kill


def test_missing_image(rbd: RBD) -> None:
    assert rbd.info("no-such-image") is None
    with pytest.raises(errors.BackendError, match="vms/no-such-image"):
        rbd.remove("no-such-image")
    with pytest.raises(errors.BackendError, match="vms/no-such-image"):
        rbd.get_meta("no-such-image")


def test_missing_pool_is_an_error_not_none(ceph_cluster: CephCluster) -> None:
    other = RBD(Runner(), pool="nopool", ceph_conf=str(ceph_cluster.conf), user="admin")
    with pytest.raises(errors.BackendError, match="nopool"):
        other.info("x")
    with pytest.raises(errors.BackendError, match="nopool"):
        other.list_images()


def test_metadata_set_get_remove(rbd: RBD, name: str) -> None:
    rbd.create(name, MiB)
    assert rbd.get_meta(name) == {}
    rbd.set_meta(name, "storagectl.layout", "rbd")
    rbd.set_meta(name, "key with spaces", "-1")  # a value that looks like an option
    assert rbd.get_meta(name) == {"storagectl.layout": "rbd", "key with spaces": "-1"}
    rbd.remove_meta(name, "key with spaces")
    assert rbd.get_meta(name) == {"storagectl.layout": "rbd"}
    with pytest.raises(errors.BackendError, match="'gone'"):
        rbd.remove_meta(name, "gone")
    rbd.remove(name)


def test_snapshots_clone_parent_and_remove_refusal(
    rbd: RBD, ceph_cluster: CephCluster, name: str
) -> None:
    rbd.create(name, 4 * MiB)
    assert rbd.list_snapshots(name) == []
    spec = f"{ceph_cluster.pool}/{name}"
    ceph_cluster.rbd("snap", "create", f"{spec}@s1")
    ceph_cluster.rbd("snap", "create", f"{spec}@s2")
    assert rbd.list_snapshots(name) == ["s1", "s2"]

    ceph_cluster.rbd("snap", "protect", f"{spec}@s1")
    clone = f"{name}-clone"
    ceph_cluster.rbd("clone", f"{spec}@s1", f"{ceph_cluster.pool}/{clone}")
    info = rbd.info(clone)
    assert info is not None and info.parent == f"vms/{name}@s1"

    with pytest.raises(errors.BackendError, match="has snapshots"):
        rbd.remove(name)
    rbd.remove(clone)
    ceph_cluster.rbd("snap", "unprotect", f"{spec}@s1")
    ceph_cluster.rbd("snap", "purge", "--no-progress", spec)
    rbd.remove(name)


def test_disk_usage_and_qemu_uri(rbd: RBD, name: str, tmp_path: Path) -> None:
    rbd.create(name, 16 * MiB)
    assert rbd.disk_usage(name) == 0
    src = tmp_path / "six.raw"
    src.write_bytes(os.urandom(6 * MiB))
    uri = rbd.qemu_uri(name)
    assert uri == f"rbd:vms/{name}:id=admin:conf={rbd.ceph_conf}"
    # -n: write into the existing image instead of creating it.
    subprocess.run(
        ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), uri], check=True
    )
    # Counted per 4 MiB object: 6 MiB of data allocates two objects.
    assert rbd.disk_usage(name) == 8 * MiB

    info = subprocess.run(
        ["qemu-img", "info", "--output=json", uri], check=True, capture_output=True, text=True
    )
    assert json.loads(info.stdout)["virtual-size"] == 16 * MiB
    rbd.remove(name)


def test_disk_usage_without_fast_diff(
    rbd: RBD, ceph_cluster: CephCluster, name: str, tmp_path: Path
) -> None:
    ceph_cluster.rbd("create", "--size", "12M", "--image-feature", "layering", f"vms/{name}")
    src = tmp_path / "twelve.raw"
    src.write_bytes(os.urandom(12 * MiB))
    uri = rbd.qemu_uri(name)
    subprocess.run(
        ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), uri], check=True
    )
    info = rbd.info(name)
    assert info is not None and info.features == ("layering",)
    assert rbd.disk_usage(name) == 12 * MiB  # all three objects written
    rbd.remove(name)


def test_free_bytes_without_mgr_is_none(rbd: RBD) -> None:
    # No ceph-mgr in the test cluster: `ceph df` answers, but with zero totals.
    assert rbd.free_bytes() is None


def test_ping_reachable(rbd: RBD) -> None:
    rbd.ping()


def test_ping_closed_port_fails_fast(ceph_cluster: CephCluster, tmp_path: Path) -> None:
    dead = tmp_path / "dead.conf"
    port = free_port()
    dead.write_text(
        ceph_cluster.conf.read_text().replace(f"127.0.0.1:{ceph_cluster.port}", f"127.0.0.1:{port}")
    )
    rbd = RBD(Runner(), pool="vms", ceph_conf=str(dead), user="admin", connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(errors.CephUnreachable) as exc:
        rbd.ping()
    elapsed = time.monotonic() - started
    assert elapsed < 6, f"ping took {elapsed:.1f}s"
    message = str(exc.value)
    assert str(dead) in message
    # storagectl's promise: its own sentence naming the conf and user, one line. The reason
    # after it is the Ceph client's (mon hunting or authentication, whichever timer fires
    # first under load; its wording belongs to the installed ceph-common, not to us).
    assert message.startswith(f"Ceph cluster not reachable with {dead} as admin: ")
    assert "\n" not in message and "Traceback" not in message
    assert str(dead) in str(exc.value)


def test_ping_missing_conf_fails_at_once(tmp_path: Path) -> None:
    rbd = RBD(Runner(), pool="vms", ceph_conf=str(tmp_path / "absent.conf"), user="admin")
    started = time.monotonic()
    with pytest.raises(errors.CephUnreachable, match="unable to open config file"):
        rbd.ping()
    assert time.monotonic() - started < 2


def test_unknown_user_is_unreachable(ceph_cluster: CephCluster) -> None:
    rbd = RBD(Runner(), pool="vms", ceph_conf=str(ceph_cluster.conf), user="nobody")
    with pytest.raises(errors.CephUnreachable, match=r"as nobody: .*Permission denied"):
        rbd.list_images()


def test_list_long_matches_info_for_every_image(rbd: RBD, name: str) -> None:
    rbd.create(name, 24 * MiB)
    try:
        listed = {i.name: i.size for i in rbd.list_long()}
        assert listed[name] == 24 * MiB
        assert set(listed) == set(rbd.list_images())
    finally:
        rbd.remove(name)
