"""The test cluster is really up: bytes written through qemu-img's rbd driver come back."""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from pathlib import Path

from tests.env.ceph import CephCluster


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_qemu_img_round_trip_through_rbd(ceph_cluster: CephCluster, tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    # 5 MiB + 512 B of random data: crosses a 4 MiB object boundary, no zero blocks.
    src.write_bytes(os.urandom(5 * 1024 * 1024 + 512))
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    uri = ceph_cluster.qemu_uri(name)

    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", str(src), uri], check=True)

    exported = tmp_path / "exported.raw"
    ceph_cluster.rbd("export", "--no-progress", f"{ceph_cluster.pool}/{name}", str(exported))
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(back)], check=True)

    assert _sha256(exported) == _sha256(src)
    assert _sha256(back) == _sha256(src)
    compare = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), uri],
        capture_output=True, text=True,
    )  # fmt: skip
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert name in ceph_cluster.rbd("ls", "--pool", ceph_cluster.pool).split()
