"""Storage.qemu_spec of an RBD image, read by the real qemu-img: both of its names - the
filename the copy and the file compare use, the --image-opts the LV compare uses - reach
the image, and both carry the librados timeouts that bound a hung cluster."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from storagectl.backends import Storage
from storagectl.host.process import Runner
from storagectl.model.location import Location, location
from tests.env.ceph import CephCluster, free_port

MiB = 1024 * 1024


@pytest.fixture
def image(ceph_cluster: CephCluster, tmp_path: Path) -> Iterator[tuple[Location, Path]]:
    """An RBD image holding the bytes of a 4 MiB file, and that file."""
    name = f"{uuid.uuid4()}_disk"
    data = tmp_path / "data.raw"
    data.write_bytes(os.urandom(4 * MiB))
    ceph_cluster.rbd("create", "--size", "4M", f"{ceph_cluster.pool}/{name}")
    subprocess.run(
        ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(data),
         ceph_cluster.qemu_uri(name)],
        check=True, capture_output=True,
    )  # fmt: skip
    loc = location(
        "rbd", "raw", pool=ceph_cluster.pool, image=name, user=ceph_cluster.user,
        ceph_conf=str(ceph_cluster.conf),
    )  # fmt: skip
    yield loc, data
    ceph_cluster.rbd("rm", "--no-progress", f"{ceph_cluster.pool}/{name}")


def file_opts(path: Path) -> str:
    return f"driver=raw,file.driver=file,file.filename={path}"


def compare(*argv: str) -> subprocess.CompletedProcess:
    argv_ = ["qemu-img", "compare", *argv]
    return subprocess.run(argv_, capture_output=True, text=True, timeout=90)


def test_both_names_reach_the_image(image: tuple[Location, Path], tmp_path: Path) -> None:
    loc, data = image
    spec = Storage(Runner(), ceph_timeout=5).qemu_spec(loc)
    assert "rados_osd_op_timeout=5" in spec.filename and spec.filename in spec.image_opts
    by_opts = compare("--image-opts", file_opts(data), spec.image_opts)
    assert by_opts.returncode == 0, by_opts.stderr
    by_name = compare("-f", "raw", "-F", "raw", str(data), spec.filename)
    assert by_name.returncode == 0, by_name.stderr
    other = tmp_path / "other.raw"
    other.write_bytes(os.urandom(4 * MiB))
    differs = compare("--image-opts", file_opts(other), spec.image_opts)
    assert differs.returncode == 1 and "Content mismatch" in differs.stdout, differs


def test_image_opts_give_up_on_an_unreachable_cluster(
    image: tuple[Location, Path], ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    """A monitor that does not answer: librados would hunt for 300 s by default; the
    options in the spec make qemu-img give up after about --ceph-timeout."""
    loc, data = image
    dead = tmp_path / "dead.conf"
    dead.write_text(
        ceph_cluster.conf.read_text().replace(
            f"127.0.0.1:{ceph_cluster.port}", f"127.0.0.1:{free_port()}"
        )
    )
    dead_loc = location(
        "rbd", "raw", pool=loc.pool, image=loc.image, user=loc.user, ceph_conf=str(dead)
    )
    spec = Storage(Runner(), ceph_timeout=3).qemu_spec(dead_loc)
    started = time.monotonic()
    res = compare("--image-opts", file_opts(data), spec.image_opts)
    elapsed = time.monotonic() - started
    assert res.returncode not in (0, 1), res  # an error, not a verdict
    assert elapsed < 30, f"qemu-img compare took {elapsed:.1f} s"
