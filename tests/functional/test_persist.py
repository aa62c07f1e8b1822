"""persist and show through the real CLI, the test driver and real qemu-img images."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import yaml

from storagectl.host.locks import instance_lock
from tests.functional.conftest import codes, qemu_img, write_json

MiB = 1 << 20


def legacy_instance(node, *, flat=False):
    """A Nova instance: qcow2 root on a raw base and a qcow2 ephemeral, as Nova's Qcow2
    images make them (the host's default), or with ``flat`` a raw root and ephemeral (a
    Flat host: ``MiniNode.flat_host``)."""
    u = node.new_uuid()
    d = node.dir(u)
    if flat:
        qemu_img("create", "-f", "raw", str(d / "disk"), str(8 * MiB))
        fmt = "raw"
    else:
        base = node.base / (f"{node._n:040x}")
        qemu_img("create", "-f", "raw", str(base), str(8 * MiB))
        qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(d / "disk"))
        fmt = "qcow2"
    qemu_img("create", "-f", fmt, str(d / "disk.local"), str(2 * MiB))
    write_json(d / "disk.info", {str(d / "disk"): fmt, str(d / "disk.local"): fmt})
    node.add(u, [{"fmt": fmt, "src": d / "disk"}, {"fmt": fmt, "src": d / "disk.local"}])
    return u


def persist(node, *args):
    code, out, err = node.run("--lock-path", str(node.root / "locks"), "persist", *args)
    return code, out, err


def persist_json(node, *args):
    code, out, err = persist(node, "-o", "json", *args)
    return code, {i["uuid"]: i for i in json.loads(out)["instances"]}, err


def test_persist_writes_record_and_inspect_then_trusts_it(mini_node):
    u = legacy_instance(mini_node)
    code, res, err = persist_json(mini_node, u)
    assert code == 0, err
    assert res[u]["status"] == "written"
    path = mini_node.instances / u / "storage.yaml"
    assert res[u]["path"] == str(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    data = yaml.safe_load(path.read_text())
    assert data["schema_version"] == 1 and data["instance"]["uuid"] == u
    assert data["obtained"]["how"] == "inferred"
    assert {"domain-xml", "nova.conf", "disk.info"} <= set(data["obtained"]["evidence"])
    root = data["disks"][0]
    assert (root["name"], root["backend"], root["format"]) == ("disk", "qcow2", "qcow2")
    assert root["location"] == {"path": str(mini_node.instances / u / "disk")}
    assert root["backing"]["format"] == "raw"
    inst = mini_node.instance(u)
    assert inst["source"] == "metadata" and inst["findings"] == []
    assert [d["backend"] for d in inst["disks"]] == ["qcow2", "qcow2"]
    # show prints the same record, by uuid and by domain name
    code, out, _ = mini_node.run("show", u)
    assert code == 0 and yaml.safe_load(out) == data
    code, out, _ = mini_node.run("show", "instance-00000001", "-o", "json")
    assert code == 0 and json.loads(out) == data


def test_record_survives_a_change_of_host_config(mini_node):
    """Persist under qcow2 + use_cow_images; flip nova.conf to lvm without CoW; the
    persisted instances keep their original backend and format."""
    mini_node.conf.write_text(
        mini_node.conf.read_text() + "use_cow_images = True\n[libvirt]\nimages_type = qcow2\n"
    )
    a, b = legacy_instance(mini_node), legacy_instance(mini_node, flat=True)
    code, res, _ = persist_json(mini_node, "--all")
    assert code == 0 and {res[a]["status"], res[b]["status"]} == {"written"}
    mini_node.conf.write_text(
        mini_node.conf.read_text()
        .replace("use_cow_images = True", "use_cow_images = False")
        .replace("images_type = qcow2", "images_type = lvm\nimages_volume_group = nova-vg")
    )
    data = {i["uuid"]: i for i in mini_node.inspect()["instances"]}
    assert data[a]["source"] == data[b]["source"] == "metadata"
    assert [(d["backend"], d["format"]) for d in data[a]["disks"]] == [
        ("qcow2", "qcow2"),
        ("qcow2", "qcow2"),
    ]
    assert [(d["backend"], d["format"]) for d in data[b]["disks"]] == [
        ("flat", "raw"),
        ("flat", "raw"),
    ]
    # ... and Nova, which never reads the record, would now look for LVs: every disk is
    # nova-would-misread, naming the LV Nova would open (the record is not the fix)
    for u in (a, b):
        found = [(f["code"], f["disk"]) for f in data[u]["findings"]]
        assert found == [("nova-would-misread", "disk"), ("nova-would-misread", "disk.local")]
        views = [d["nova"] for d in data[u]["disks"]]
        assert [v["location"] for v in views] == [
            f"/dev/nova-vg/{u}_disk",
            f"/dev/nova-vg/{u}_disk.local",
        ]
        assert {(v["images_type"], v["exists"], v["matches"]) for v in views} == {
            ("lvm", False, False)
        }
    # the question before flipping it, asked with --assume: qcow2 instances are fine
    # under qcow2, the flat one is not
    flip = ("--assume", "[libvirt] images_type=qcow2")
    data = {i["uuid"]: i for i in mini_node.inspect(*flip)["instances"]}
    assert data[a]["findings"] == []
    assert {f["code"] for f in data[b]["findings"]} == {"nova-would-misread"}


def test_critical_finding_refuses_that_instance_only(mini_node, tmp_path):
    good = legacy_instance(mini_node)
    bad = mini_node.new_uuid()
    d = mini_node.dir(bad)
    evil = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(evil), "1G")
    qemu_img("create", "-f", "raw", str(d / "disk"), str(4 * MiB))
    with open(d / "disk", "r+b") as fh:
        fh.write(evil.read_bytes()[:65536])
    mini_node.add(bad, [{"fmt": "raw", "src": d / "disk"}])
    code, res, _ = persist_json(mini_node, "--all")
    assert code == 1
    assert res[good]["status"] == "written"
    assert res[bad]["status"] == "refused"
    assert "raw-disk-has-image-header" in res[bad]["reason"]
    assert not (d / "storage.yaml").exists()


def test_unchanged_then_different_then_force(mini_node):
    u = legacy_instance(mini_node)
    assert persist_json(mini_node, u)[1][u]["status"] == "written"
    path = mini_node.instances / u / "storage.yaml"
    first = path.read_bytes()
    code, res, _ = persist_json(mini_node, u)
    assert code == 0 and res[u]["status"] == "unchanged"
    assert path.read_bytes() == first
    # The record now differs from what inference finds (an operator edited it).
    assert b"target: vdb" in first
    edited = first.replace(b"target: vdb", b"target: vdc")
    path.write_bytes(edited)
    code, out, _ = persist(mini_node, u)
    assert code == 1 and "refused" in out
    # the diff: the recorded (edited) line goes, the inferred one comes
    assert "-  target: vdc" in out and "+  target: vdb" in out
    assert path.read_bytes() == edited  # nothing changed
    code, res, _ = persist_json(mini_node, "--force", u)
    assert code == 0 and res[u]["status"] == "written"
    assert res[u]["backup"] and Path(res[u]["backup"]).read_bytes() == edited
    assert b"target: vdb" in path.read_bytes()


def test_dry_run_prints_and_writes_nothing(mini_node):
    u = legacy_instance(mini_node)
    code, out, _ = persist(mini_node, "--dry-run", u)
    assert code == 0 and f"uuid: {u}" in out and "would-write" in out
    assert not (mini_node.instances / u / "storage.yaml").exists()
    code, res, _ = persist_json(mini_node, "--dry-run", u)
    assert res[u]["status"] == "would-write" and res[u]["record"]["instance"]["uuid"] == u


def test_usage_errors(mini_node):
    code, _, err = persist(mini_node)
    assert code == 2 and "--all" in err
    code, _, err = persist(mini_node, "--all", "x")
    assert code == 2
    # an unknown instance is not told to run persist (#12 item 13)
    code, _, err = mini_node.run("show", "00000000-0000-0000-0000-0000000000ff")
    assert code == 1 and "NoSuchInstance: no such instance" in err and "persist" not in err


def test_invalid_record_is_flagged_and_left_alone(mini_node):
    u = legacy_instance(mini_node)
    persist_json(mini_node, u)
    path = mini_node.instances / u / "storage.yaml"
    broken = b"schema_version: 1\ninstance: {uuid: [unclosed\n"
    path.write_bytes(broken)
    inst = mini_node.instance(u)
    assert inst["source"] == "inferred" and "metadata-invalid" in codes(inst)
    code, _, err = mini_node.run("show", u)
    assert code == 1 and "RecordInvalid" in err and str(path) in err
    assert "Traceback" not in err
    code, res, _ = persist_json(mini_node, u)
    assert code == 1 and res[u]["status"] == "refused" and "--force" in res[u]["reason"]
    assert path.read_bytes() == broken


def test_format_changed_behind_the_record(mini_node):
    u = legacy_instance(mini_node, flat=True)
    persist_json(mini_node, u)
    mini_node.domains[-1] = mini_node.domains[-1].replace("type='raw'", "type='qcow2'", 1)
    inst = mini_node.instance(u)
    assert inst["source"] == "metadata"
    assert "format-mismatch" in codes(inst)


def _hold(lock_path, uuid, ready, release):
    with instance_lock(lock_path, uuid):
        ready.set()
        release.wait(30)


def test_a_persist_while_another_holds_the_instance_lock_fails_cleanly(mini_node):
    u = legacy_instance(mini_node)
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(mini_node.root / "locks"), u, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        code, res, _ = persist_json(mini_node, u)
        assert code == 1 and res[u]["status"] == "refused" and "locked" in res[u]["reason"]
        assert not (mini_node.instances / u / "storage.yaml").exists()
    finally:
        release.set()
        holder.join(10)
    code, res, _ = persist_json(mini_node, u)
    assert code == 0 and res[u]["status"] == "written"
