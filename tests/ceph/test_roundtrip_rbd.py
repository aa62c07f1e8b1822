"""Round trips between files and RBD on the real Ceph test cluster and libvirtd (#20).

flat -> rbd -> flat -> rbd, rbd -> flat -> rbd -> flat, and the same with qcow2: every
leg after the first lands on a name an earlier leg kept its source under (the flat file
``disk``, the image ``<uuid>_disk``). That copy is moved aside (``disk.retained-flat-1``,
``<uuid>_disk.retained-rbd-1``), never reused; after every leg the guest sees the
reference bytes, the XML and the record agree, and audit is clean; at the end
``--delete-retained`` removes every kept copy, files and images. Also: the operator who
removes the kept file by hand (the advice of the old refusal) and migrates back.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.env.ceph import CephCluster
from tests.env.libvirtd import Libvirtd
from tests.migrate_support import (
    SECRET,
    STEPS,
    Node,
    guest_sha,
    guest_view,
    images,
    leftovers,
    make_instance,
    new_node,
    rbd_sha,
    snapshot,
)
from tests.roundtrip_support import check_leg


@pytest.fixture
def node(libvirtd: Libvirtd, libvirt_workdir: Path, ceph_cluster: CephCluster) -> Node:
    return new_node(libvirtd, libvirt_workdir, ceph_cluster)


def new(node: Node, root: str) -> str:
    return make_instance(node, root=root, size_mib=16, data_mib=3, local_mib=None)


def run_leg(node: Node, uuid: str, to: str, *extra: str) -> None:
    args = ["migrate", uuid, "--to", to, "--yes", *extra]
    if to == "rbd":
        args += ["--secret-uuid", SECRET]
    res = node.run(*args)
    assert res.returncode == 0, res.stdout + res.stderr


def kept(rec: dict) -> set[tuple[str, str]]:
    """(backend, file or image name) of each retained item."""
    return {
        (r["backend"], r["image"] if r["backend"] == "rbd" else Path(r["path"]).name)
        for r in rec["retained_sources"]
    }


class Model:
    """Where each leg keeps the root disk's source, and where an earlier copy in the way
    goes: a file source stays ``disk`` when the target is RBD, else becomes
    ``disk.retained-<backend>``; an RBD source stays ``<uuid>_disk``; a copy holding the
    name the leg needs (its target, or that kept name) moves to the first free
    ``<name>.retained-<backend>-<n>`` (deleted instead with --delete-retained)."""

    def __init__(self, uuid: str, backend: str) -> None:
        self.uuid, self.backend = uuid, backend
        self.kept: set[tuple[str, str]] = set()

    def _name(self, backend: str, to: str) -> str:
        if backend == "rbd":
            return f"{self.uuid}_disk"
        return "disk" if to == "rbd" else f"disk.retained-{backend}"

    def leg(self, to: str, *, delete: bool = False) -> None:
        source = self._name(self.backend, to)
        target = f"{self.uuid}_disk" if to == "rbd" else "disk"
        for name in {source, target}:
            held = next((k for k in self.kept if k[1] == name), None)
            if held is None:
                continue
            self.kept.discard(held)
            if not delete:
                base = f"{self.uuid}_disk" if held[0] == "rbd" else "disk"
                n = 1
                while (held[0], f"{base}.retained-{held[0]}-{n}") in self.kept:
                    n += 1
                self.kept.add((held[0], f"{base}.retained-{held[0]}-{n}"))
        self.kept.add((self.backend, source))
        self.backend = to


@pytest.mark.parametrize(
    "start,other",
    [("flat", "rbd"), ("rbd", "flat"), ("qcow2", "rbd"), ("rbd", "qcow2")],
)
def test_round_trip(node: Node, tmp_path: Path, start: str, other: str) -> None:
    uuid = new(node, start)
    refs = {"vda": guest_view(node, uuid, tmp_path, "vda")}
    model = Model(uuid, start)
    for i, to in enumerate((other, start, other, start)):  # A -> B -> A -> B -> A
        if i == 1:
            res = node.run("migrate", uuid, "--to", to, "--dry-run")
            assert res.returncode == 0, res.stdout + res.stderr
            assert "of an earlier migration is in the way: kept, renamed to" in res.stdout
        run_leg(node, uuid, to)
        model.leg(to)
        rec = check_leg(node, uuid, to, refs, tmp_path)
        assert kept(rec) == model.kept, (i, to)
        assert leftovers(node, uuid) == []
    for r in node.record(uuid)["retained_sources"]:  # each kept copy holds the data
        if r["backend"] == "rbd":
            assert rbd_sha(node.cluster, r["image"], tmp_path) == refs["vda"], r
        else:
            assert guest_sha(r["path"], r["format"], tmp_path) == refs["vda"], r
    res = node.run("migrate", "--delete-retained", uuid, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert node.record(uuid)["retained_sources"] == []
    assert images(node.cluster, uuid) == ([f"{uuid}_disk"] if start == "rbd" else [])
    files = (
        ["disk.info", "storage.yaml"] if start == "rbd" else ["disk", "disk.info", "storage.yaml"]
    )
    assert sorted(os.listdir(node.instances / uuid)) == files
    check_leg(node, uuid, start, refs, tmp_path)


def test_delete_retained_with_to_removes_the_image_in_the_way(node: Node, tmp_path: Path) -> None:
    uuid = new(node, "flat")
    refs = {"vda": guest_view(node, uuid, tmp_path, "vda")}
    run_leg(node, uuid, "rbd")
    run_leg(node, uuid, "flat")  # keeps <uuid>_disk; the flat copy moved aside
    assert f"{uuid}_disk" in images(node.cluster, uuid)
    res = node.run("migrate", uuid, "--to", "rbd", "--delete-retained", "--dry-run")
    assert f"rbd:{node.cluster.pool}/{uuid}_disk of an earlier migration" in res.stdout
    assert "deleted at cleanup (--delete-retained)" in res.stdout
    run_leg(node, uuid, "rbd", "--delete-retained")
    rec = check_leg(node, uuid, "rbd", refs, tmp_path)
    assert images(node.cluster, uuid) == [f"{uuid}_disk"]
    assert kept(rec) == {("flat", "disk.retained-flat-1"), ("flat", "disk")}


def test_operator_removed_the_kept_file_and_moved_back(node: Node, tmp_path: Path) -> None:
    """The path of the issue: flat -> rbd, then the kept flat ``disk`` removed by hand,
    then back to flat: the record must not list the live disk as retained, and
    --delete-retained must be able to remove the kept image."""
    uuid = new(node, "flat")
    d = node.instances / uuid
    refs = {"vda": guest_view(node, uuid, tmp_path, "vda")}
    run_leg(node, uuid, "rbd")
    (d / "disk").unlink()
    run_leg(node, uuid, "flat")
    rec = check_leg(node, uuid, "flat", refs, tmp_path)
    assert kept(rec) == {("rbd", f"{uuid}_disk")}
    res = node.run("migrate", "--delete-retained", uuid, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert images(node.cluster, uuid) == []
    assert node.record(uuid)["retained_sources"] == []
    check_leg(node, uuid, "flat", refs, tmp_path)


@pytest.mark.parametrize("fault", ["create:before", "create:after", "switch:after"])
def test_killed_around_the_image_rename(node: Node, tmp_path: Path, fault: str) -> None:
    """kill -9 before the kept image is renamed, after it (and the new target created),
    after the switch: --rollback puts the kept image back under <uuid>_disk, --resume
    finishes."""
    uuid = new(node, "flat")
    refs = {"vda": guest_view(node, uuid, tmp_path, "vda")}
    run_leg(node, uuid, "rbd")
    run_leg(node, uuid, "flat")
    before = snapshot(node, uuid)
    assert fault.split(":")[0] in STEPS
    argv = ("migrate", uuid, "--to", "rbd", "--yes", "--secret-uuid", SECRET)
    res = node.killed(*argv, fault=fault)
    assert res.returncode == -9, res.stderr
    res = node.run("migrate", "--rollback", uuid, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert snapshot(node, uuid) == before
    check_leg(node, uuid, "flat", refs, tmp_path)
    res = node.killed(*argv, fault=fault)
    assert res.returncode == -9, res.stderr
    res = node.run("migrate", "--resume", uuid, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    rec = check_leg(node, uuid, "rbd", refs, tmp_path)
    assert ("rbd", f"{uuid}_disk.retained-rbd-1") in kept(rec)
    assert f"{uuid}_disk.retained-rbd-1" in images(node.cluster, uuid)
