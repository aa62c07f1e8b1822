"""migrate refuses to strand an instance (issue #15 part 2): the Nova view of the result,
on a node of real files and qemu-img with the fake libvirt of the kill matrix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_migrate_matrix_fake_libvirt import FakeNode, make_instance, snapshot


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path / "node")


def test_a_move_nova_would_misread_is_refused_with_the_ways_out(node: FakeNode) -> None:
    uuid = make_instance(node, "qcow2")
    before = snapshot(node, uuid)
    res = node.run("migrate", uuid, "--to", "flat", "--yes")
    assert res.returncode == 1, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"--> MigrationRefused: cannot migrate instance-{uuid[:8]} ({uuid})")
    # what Nova would do, with which setting, and the two ways out
    assert "after the move Nova would misread it: disk is stored at" in line
    assert "images_type=default, use_cow_images=true) would open it as qcow2" in line
    assert "--assume '[libvirt] images_type=flat'" in line and "--nova-conf-after" in line
    assert snapshot(node, uuid) == before
    assert not (node.instances / uuid / "storage.migration.json").exists()


def test_the_dry_run_says_the_same(node: FakeNode) -> None:
    uuid = make_instance(node, "qcow2")
    res = node.run("migrate", uuid, "--to", "flat", "--dry-run")
    assert res.returncode == 1 and "after the move Nova would misread it" in res.stderr


def test_with_the_nova_conf_to_be_it_moves_and_names_what_must_move_too(node: FakeNode) -> None:
    # a Flat host (its raw files' formats in disk.info) going to Qcow2
    node.conf.write_text(node.conf.read_text() + "use_cow_images = false\n")
    moving, other = make_instance(node, "flat"), make_instance(node, "flat")
    assume = ("--assume", "[libvirt] images_type=qcow2")
    res = node.run("migrate", moving, "--to", "qcow2", *assume, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "Nova reads the result as stored with the nova.conf to be" in res.stdout
    assert "[libvirt] images_type=qcow2" in res.stdout
    assert f"these instances must move too (1): instance-{other[:8]} ({other})" in res.stdout
    res = node.run("migrate", moving, "--to", "qcow2", *assume, "--dry-run", "-o", "json")
    data = json.loads(res.stdout)
    assert data["still_to_move"] == [{"uuid": other, "name": f"instance-{other[:8]}"}]
    (plan,) = data["plans"]
    assert plan["nova"]["misread"] == []
    assert plan["nova"]["settings"] == ["[libvirt] images_type=qcow2"]
    # both named on one command line: nothing else left to move
    res = node.run("migrate", moving, other, "--to", "qcow2", *assume, "--dry-run")
    assert "no other instance of this host would be misread" in res.stdout
    res = node.run("migrate", moving, "--to", "qcow2", *assume, "--yes")
    assert res.returncode == 0, res.stderr
    node.rescan()
    # inspect --assume is the operator's check before the flip: the moved instance is
    # read as stored, the other is not
    res = node.run("inspect", "-o", "json", *assume)
    found = {i["uuid"]: i for i in json.loads(res.stdout)["instances"]}
    assert found[moving]["findings"] == []
    assert [d["nova"]["format"] for d in found[moving]["disks"]] == ["qcow2", "qcow2"]
    assert {f["code"] for f in found[other]["findings"]} == {"nova-would-misread"}
    # and with the Flat nova.conf it has now, Nova reads both (formats from disk.info)
    res = node.run("inspect", "-o", "json")
    assert all(i["findings"] == [] for i in json.loads(res.stdout)["instances"])


def test_a_nova_conf_file_to_be_works_like_assume(node: FakeNode, tmp_path: Path) -> None:
    uuid = make_instance(node, "qcow2")
    after = tmp_path / "nova.conf.after"
    after.write_text(node.conf.read_text() + "use_cow_images = false\n")
    res = node.run("migrate", uuid, "--to", "flat", "--nova-conf-after", str(after), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert f"the nova.conf to be ({after}: images_type=default, use_cow_images=false)" in (
        res.stdout
    )


def test_a_nova_conf_to_be_that_still_misreads_it_is_refused(node: FakeNode) -> None:
    uuid = make_instance(node, "qcow2")
    res = node.run("migrate", uuid, "--to", "flat", "--assume", "images_type=lvm", "--yes")
    assert res.returncode == 1
    assert "after the move Nova, with the nova.conf to be" in res.stderr
    assert "would still misread it" in res.stderr
    assert "images_volume_group is not set" in res.stderr


@pytest.mark.parametrize("mode", ["--resume", "--rollback", "--status"])
def test_assume_belongs_to_to(node: FakeNode, mode: str) -> None:
    res = node.run("migrate", mode, "--assume", "images_type=flat")
    assert res.returncode == 2
    assert "--assume does not apply to " + mode in res.stderr


def test_assume_refuses_an_option_storagectl_does_not_read(node: FakeNode) -> None:
    uuid = make_instance(node, "qcow2")
    res = node.run("migrate", uuid, "--to", "flat", "--assume", "image_type=flat", "--yes")
    assert res.returncode == 2
    assert "storagectl reads no nova.conf option image_type" in res.stderr
