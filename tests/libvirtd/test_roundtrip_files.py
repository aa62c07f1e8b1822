"""Round trips between flat and qcow2 files on the real libvirtd (issue #20).

flat -> qcow2 -> flat -> qcow2 and qcow2 -> flat -> qcow2 -> flat: the third leg needs
the name the first leg kept its source under (``disk.retained-<backend>``); that copy is
moved aside (``disk.retained-<backend>-1``) or, with ``--delete-retained``, deleted. After
every leg the guest sees the reference bytes, the XML, the record and Nova's disk.info
agree, and ``audit`` is clean; at the end ``--delete-retained`` removes every kept copy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.env.libvirtd import Libvirtd
from tests.migrate_support import (
    CLEAN_INSTANCE_DIR,
    STEPS,
    Node,
    dir_names,
    guest_sha,
    guest_view,
    leftovers,
    make_instance,
    new_node,
    snapshot,
)
from tests.roundtrip_support import audit_findings, check_leg

OTHER = {"flat": "qcow2", "qcow2": "flat"}


@pytest.fixture
def node(libvirtd: Libvirtd, libvirt_workdir: Path) -> Node:
    return new_node(libvirtd, libvirt_workdir)


def references(node: Node, uuid: str, scratch: Path) -> dict[str, str]:
    return {t: guest_view(node, uuid, scratch, t) for t in ("vda", "vdb")}


def disk_info(node: Node, uuid: str) -> dict:
    return json.loads((node.instances / uuid / "disk.info").read_text())


def leg(node: Node, uuid: str, to: str, refs: dict, scratch: Path, *extra: str) -> dict:
    res = node.run("migrate", uuid, "--to", to, "--yes", *extra)
    assert res.returncode == 0, res.stdout + res.stderr
    rec = check_leg(node, uuid, to, refs, scratch)
    d = node.instances / uuid
    fmt = "raw" if to == "flat" else "qcow2"
    assert disk_info(node, uuid) == {str(d / "disk"): fmt, str(d / "disk.local"): fmt}
    assert leftovers(node, uuid) == []
    return rec


def retained(rec: dict) -> list[tuple[str, str, str]]:
    return sorted((r["disk"], r["backend"], Path(r["path"]).name) for r in rec["retained_sources"])


class Model:
    """What the record's retained_sources must hold: each leg keeps each moved disk's
    source as ``<disk>.retained-<backend>``; a copy already there moves aside to the
    first free ``-<n>`` (or is deleted with --delete-retained)."""

    def __init__(self, backends: dict[str, str]) -> None:
        self.backends = dict(backends)
        self.kept: set[tuple[str, str, str]] = set()

    def leg(self, to: str, *, delete: bool = False) -> None:
        for disk, backend in self.backends.items():
            if backend == to:
                continue
            name = f"{disk}.retained-{backend}"
            old = next((k for k in self.kept if k[2] == name), None)
            if old is not None:
                self.kept.discard(old)
                if not delete:
                    n = 1
                    while any(k[2] == f"{name}-{n}" for k in self.kept):
                        n += 1
                    self.kept.add((disk, backend, f"{name}-{n}"))
            self.kept.add((disk, backend, name))
            self.backends[disk] = to


@pytest.mark.parametrize("start", ["flat", "qcow2"])
def test_round_trip_keeps_every_copy_then_deletes_them(
    node: Node, tmp_path: Path, start: str
) -> None:
    uuid = make_instance(node, root=start)
    d = node.instances / uuid
    refs = references(node, uuid, tmp_path)
    other = OTHER[start]
    model = Model({"disk": start, "disk.local": "flat"})
    for to in (other, start):  # A -> B -> A
        rec = leg(node, uuid, to, refs, tmp_path)
        model.leg(to)
        assert set(retained(rec)) == model.kept
    # A -> B again: disk.retained-A is in the way.
    res = node.run("migrate", uuid, "--to", other, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert f"retained copy {d / f'disk.retained-{start}'} of an earlier migration" in res.stdout
    assert f"kept, renamed to {d / f'disk.retained-{start}-1'}" in res.stdout
    rec = leg(node, uuid, other, refs, tmp_path)
    model.leg(other)
    assert set(retained(rec)) == model.kept
    assert ("disk", start, f"disk.retained-{start}-1") in model.kept
    # every kept copy is what the record says it is: it shows the reference bytes
    for r in rec["retained_sources"]:
        target = "vda" if r["disk"] == "disk" else "vdb"
        assert guest_sha(r["path"], r["format"], tmp_path) == refs[target], r
    # B -> A (deleting what is in the way this time) -> B once more
    rec = leg(node, uuid, start, refs, tmp_path, "--delete-retained")
    model.leg(start, delete=True)
    assert set(retained(rec)) == model.kept
    rec = leg(node, uuid, other, refs, tmp_path)
    model.leg(other)
    assert set(retained(rec)) == model.kept
    kept_files = sorted(p.name for p in d.iterdir() if ".retained-" in p.name)
    assert kept_files == sorted(k[2] for k in model.kept)
    res = node.run("migrate", "--delete-retained", uuid, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert node.record(uuid)["retained_sources"] == []
    assert dir_names(d) == CLEAN_INSTANCE_DIR
    check_leg(node, uuid, other, refs, tmp_path)


def test_delete_retained_with_to_deletes_only_the_copy_in_the_way(
    node: Node, tmp_path: Path
) -> None:
    uuid = make_instance(node, root="flat", local_mib=None)
    d = node.instances / uuid
    refs = {"vda": guest_view(node, uuid, tmp_path, "vda")}
    for to in ("qcow2", "flat"):
        node_leg = node.run("migrate", uuid, "--to", to, "--yes")
        assert node_leg.returncode == 0, node_leg.stderr
        check_leg(node, uuid, to, refs, tmp_path)
    res = node.run("migrate", uuid, "--to", "qcow2", "--delete-retained", "--dry-run")
    assert "renamed to" in res.stdout and "deleted at cleanup (--delete-retained)" in res.stdout
    res = node.run("migrate", uuid, "--to", "qcow2", "--delete-retained", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    rec = check_leg(node, uuid, "qcow2", refs, tmp_path)
    # the flat copy of leg 1 is gone; leg 2's qcow2 copy and leg 3's flat source remain
    assert retained(rec) == [
        ("disk", "flat", "disk.retained-flat"),
        ("disk", "qcow2", "disk.retained-qcow2"),
    ]
    assert sorted(p.name for p in d.iterdir() if ".retained-" in p.name) == [
        "disk.retained-flat",
        "disk.retained-qcow2",
    ]


@pytest.mark.parametrize("fault", ["create:before", "create:after", "switch:after"])
def test_round_trip_leg_killed_resumes_or_rolls_back(
    node: Node, tmp_path: Path, fault: str
) -> None:
    """kill -9 around the rename of the copy in the way: --rollback puts it back under its
    name (and the record lists it there), --resume finishes the leg."""
    uuid = make_instance(node, root="flat", local_mib=None)
    d = node.instances / uuid
    refs = {"vda": guest_view(node, uuid, tmp_path, "vda")}
    for to in ("qcow2", "flat"):
        assert node.run("migrate", uuid, "--to", to, "--yes").returncode == 0
    before = snapshot(node, uuid)
    step = fault.split(":")[0]
    assert step in STEPS
    res = node.killed("migrate", uuid, "--to", "qcow2", "--yes", fault=fault)
    assert res.returncode == -9, res.stderr
    res = node.run("migrate", "--rollback", uuid, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert snapshot(node, uuid) == before
    check_leg(node, uuid, "flat", refs, tmp_path)
    res = node.killed("migrate", uuid, "--to", "qcow2", "--yes", fault=fault)
    assert res.returncode == -9, res.stderr
    res = node.run("migrate", "--resume", uuid, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    rec = check_leg(node, uuid, "qcow2", refs, tmp_path)
    assert ("disk", "flat", "disk.retained-flat-1") in retained(rec)
    assert (d / "disk.retained-flat-1").exists() and leftovers(node, uuid) == []


def test_stranded_record_is_reported_and_repaired(node: Node, tmp_path: Path) -> None:
    """A record written before #20 (the operator removed the kept file, migrated back,
    and the record still lists the live disk as retained): audit names it, persist drops
    it, --delete-retained then removes the rest."""
    uuid = make_instance(node, root="flat", local_mib=None)
    d = node.instances / uuid
    refs = {"vda": guest_view(node, uuid, tmp_path, "vda")}
    assert node.run("migrate", uuid, "--to", "qcow2", "--yes").returncode == 0
    path = d / "storage.yaml"
    rec = yaml.safe_load(path.read_text())
    stale = {"disk": "disk", "backend": "qcow2", "format": "qcow2", "path": str(d / "disk")}
    rec["retained_sources"].append(stale)
    path.write_text(yaml.safe_dump(rec, sort_keys=False))
    found = audit_findings(node, uuid)
    assert [(f["code"], f["disk"]) for f in found] == [("retained-in-use", "disk")]
    assert str(d / "disk") in found[0]["message"] and f"persist {uuid}" in found[0]["message"]
    res = node.run("persist", uuid)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "dropped from retained_sources" in res.stdout
    rec = check_leg(node, uuid, "qcow2", refs, tmp_path)
    assert retained(rec) == [("disk", "flat", "disk.retained-flat")]
    res = node.run("migrate", "--delete-retained", uuid, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not (d / "disk.retained-flat").exists() and (d / "disk").exists()
    check_leg(node, uuid, "qcow2", refs, tmp_path)


@pytest.mark.parametrize("taken", ["new-name", "copy-target"])
def test_a_name_taken_after_preflight_is_never_removed(
    node: Node, tmp_path: Path, taken: str
) -> None:
    """Stopped right after preflight (kill -9), then something else takes a name the leg
    needs - the new name of the retained copy in the way, or the copy's own target: the
    resume refuses before creating anything, removes nothing of the other's, puts back
    every rename, and the retained copy keeps its data and its place in the record."""
    uuid = make_instance(node, root="flat", local_mib=None)
    d = node.instances / uuid
    refs = {"vda": guest_view(node, uuid, tmp_path, "vda")}
    for to in ("qcow2", "flat"):
        assert node.run("migrate", uuid, "--to", to, "--yes").returncode == 0
    kept = d / "disk.retained-flat"
    kept_bytes = kept.read_bytes()
    res = node.killed("migrate", uuid, "--to", "qcow2", "--yes", fault="preflight:after")
    assert res.returncode == -9, res.stderr
    foreign = d / ("disk.retained-flat-1" if taken == "new-name" else "disk.migrating")
    foreign.write_bytes(b"not storagectl's" * 64)
    before = snapshot(node, uuid)
    res = node.run("migrate", "--resume", uuid, "--yes")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "taken meanwhile" in res.stderr or "appeared after preflight" in res.stderr
    assert "Traceback" not in res.stderr
    assert foreign.read_bytes() == b"not storagectl's" * 64  # never removed
    assert kept.read_bytes() == kept_bytes  # the retained copy: same name, same bytes
    assert not (d / "storage.migration.json").exists()  # nothing left to resume
    before["files"].remove("storage.migration.json")
    assert snapshot(node, uuid) == before
    foreign.unlink()
    check_leg(node, uuid, "flat", refs, tmp_path)
    res = node.run("migrate", uuid, "--to", "qcow2", "--yes")  # and the leg goes through
    assert res.returncode == 0, res.stdout + res.stderr
    rec = check_leg(node, uuid, "qcow2", refs, tmp_path)
    assert ("disk", "flat", "disk.retained-flat-1") in retained(rec)
