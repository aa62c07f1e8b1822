"""Every inspect finding code, each produced by a real attack or fault made with qemu-img."""

from __future__ import annotations

import json
import os
import struct
import subprocess

from tests.functional.conftest import codes, qemu_img, write_json

MiB = 1 << 20


def raw_base(node, name="a" * 40, size=8 * MiB):
    path = node.base / name
    qemu_img("create", "-f", "raw", str(path), str(size))
    return path


def qcow2_on(path, base, fmt="raw", size=None):
    args = ["create", "-f", "qcow2", "-b", str(base), "-F", fmt, str(path)]
    if size:
        args.append(str(size))
    qemu_img(*args)


def finding(inst, code):
    return next(f for f in inst["findings"] if f["code"] == code)


def test_clean_qcow2_on_base_and_flat_disk(mini_node):
    # Nova's Flat images (use_cow_images = false) take each file's format from disk.info:
    # a qcow2 root (force_raw_images = false) beside a raw ephemeral is as Nova reads it
    mini_node.flat_host()
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    base = raw_base(mini_node)
    qcow2_on(d / "disk", base, size=16 * MiB)
    qemu_img("create", "-f", "raw", str(d / "disk.local"), str(4 * MiB))
    write_json(d / "disk.info", {str(d / "disk"): "qcow2", str(d / "disk.local"): "raw"})
    mini_node.add(u, [{"fmt": "qcow2", "src": d / "disk"}, {"fmt": "raw", "src": d / "disk.local"}])
    inst = mini_node.instance(u)
    assert inst["findings"] == []
    assert inst["source"] == "inferred" and inst["state"] == "running"
    root, eph = inst["disks"]
    assert (root["name"], root["role"], root["backend"], root["format"], root["target"]) == (
        "disk",
        "root",
        "qcow2",
        "qcow2",
        "vda",
    )
    assert root["backing"] == {"path": str(base), "format": "raw"}
    assert root["virtual_size"] == 16 * MiB
    info = json.loads(qemu_img("info", "-f", "qcow2", "--output=json", str(d / "disk")))
    assert root["allocated_size"] == info["actual-size"]
    assert (eph["role"], eph["backend"], eph["format"], eph["virtual_size"]) == (
        "ephemeral",
        "flat",
        "raw",
        4 * MiB,
    )
    assert eph["backing"] is None
    assert set(root) == {
        "name",
        "role",
        "target",
        "backend",
        "format",
        "path",
        "volume_group",
        "volume",
        "pool",
        "image",
        "virtual_size",
        "allocated_size",
        "backing",
        "nova",
    }
    assert root["nova"] == {
        "images_type": "flat",
        "location": str(d / "disk"),
        "format": "qcow2",
        "exists": True,
        "matches": True,
    }


def test_raw_disk_with_qcow2_header_naming_host_file(mini_node, tmp_path):
    """CVE-2015-7548/CVE-2016-2140: the guest wrote a qcow2 header into its raw disk."""
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    evil = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", str(evil), "1G")
    qemu_img("create", "-f", "raw", str(d / "disk"), str(16 * MiB))
    header = evil.read_bytes()[: 64 * 1024]
    with open(d / "disk", "r+b") as fh:  # what a guest does with dd to /dev/vda
        fh.write(header)
    mini_node.add(u, [{"fmt": "raw", "src": d / "disk"}])
    inst = mini_node.instance(u)
    f = finding(inst, "raw-disk-has-image-header")
    assert f["severity"] == "critical" and f["disk"] == "disk"
    assert "/etc/passwd" in f["message"] and "qcow2" in f["message"]
    disk = inst["disks"][0]
    assert disk["backing"] is None  # never reported as the disk's backing
    assert disk["virtual_size"] == 16 * MiB  # raw: the file size, not the header's 1G


def test_backing_file_outside_cache(mini_node, tmp_path):
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    outside = tmp_path / "elsewhere.raw"
    qemu_img("create", "-f", "raw", str(outside), str(MiB))
    qcow2_on(d / "disk", outside)
    mini_node.add(u, [{"fmt": "qcow2", "src": d / "disk"}])
    inst = mini_node.instance(u)
    f = finding(inst, "backing-file-outside-cache")
    assert f["severity"] == "critical" and str(outside) in f["message"]
    assert inst["disks"][0]["backing"]["path"] == str(outside)


def test_nested_backing_chain_in_cache(mini_node):
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    bottom = raw_base(mini_node, "b" * 40)
    middle = mini_node.base / ("c" * 40)
    qcow2_on(middle, bottom)
    qcow2_on(d / "disk", middle, fmt="qcow2")
    mini_node.add(u, [{"fmt": "qcow2", "src": d / "disk"}])
    inst = mini_node.instance(u)
    f = finding(inst, "nested-backing-chain")
    assert f["severity"] == "warning" and str(bottom) in f["message"]
    assert "backing-file-outside-cache" not in codes(inst)


def test_qcow2_with_external_data_file(mini_node, tmp_path):
    """CVE-2024-32498: a qcow2 whose data-file names a host file."""
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    data = tmp_path / "host-data.raw"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={data}", str(d / "disk"), str(MiB))
    mini_node.add(u, [{"fmt": "qcow2", "src": d / "disk"}])
    f = finding(mini_node.instance(u), "qcow2-data-file")
    assert f["severity"] == "critical" and str(data) in f["message"]


def test_qcow2_unknown_incompatible_feature_is_unsafe(mini_node):
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    qemu_img("create", "-f", "qcow2", str(d / "disk"), str(MiB))
    with open(d / "disk", "r+b") as fh:  # incompatible_features at offset 72 (qcow2 v3)
        fh.seek(72)
        fh.write(struct.pack(">Q", 1 << 40))
    mini_node.add(u, [{"fmt": "qcow2", "src": d / "disk"}])
    f = finding(mini_node.instance(u), "unsafe-image-format")
    assert f["severity"] == "critical"


def test_qed_disk_is_unsafe(mini_node):
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    qemu_img("create", "-f", "qed", str(d / "disk"), str(MiB))
    mini_node.add(u, [{"fmt": "qed", "src": d / "disk"}])
    inst = mini_node.instance(u)
    assert "unsafe-image-format" in codes(inst)
    assert inst["disks"][0]["backend"] == "unknown"


def test_disk_info_disagrees_with_domain(mini_node):
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    qemu_img("create", "-f", "raw", str(d / "disk"), str(MiB))
    write_json(d / "disk.info", {str(d / "disk"): "qcow2"})
    mini_node.add(u, [{"fmt": "raw", "src": d / "disk"}])
    inst = mini_node.instance(u)
    f = finding(inst, "format-mismatch")
    assert "disk.info says qcow2" in f["message"]
    assert inst["disks"][0]["format"] == "raw"  # the XML stays the authority


def test_domain_says_qcow2_but_file_is_raw(mini_node):
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    qemu_img("create", "-f", "raw", str(d / "disk"), str(MiB))
    mini_node.add(u, [{"fmt": "qcow2", "src": d / "disk"}])
    assert "format-mismatch" in codes(mini_node.instance(u))


def test_symlinked_disk_outside_instance_dir(mini_node, tmp_path):
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    target = tmp_path / "outside" / "real.raw"
    target.parent.mkdir()
    qemu_img("create", "-f", "raw", str(target), str(MiB))
    os.symlink(target, d / "disk")
    mini_node.add(u, [{"fmt": "raw", "src": d / "disk"}])
    inst = mini_node.instance(u)
    f = finding(inst, "disk-outside-instance-dir")
    assert f["severity"] == "critical" and str(target) in f["message"]
    assert inst["disks"][0]["backend"] == "flat"


def test_file_disk_in_a_random_directory(mini_node, tmp_path):
    u = mini_node.new_uuid()
    mini_node.dir(u)
    other = tmp_path / "srv.img"
    qemu_img("create", "-f", "raw", str(other), str(MiB))
    mini_node.add(u, [{"fmt": "raw", "src": other}])
    inst = mini_node.instance(u)
    assert {"disk-outside-instance-dir", "unknown-layout"} <= codes(inst)
    assert inst["disks"][0]["backend"] == "unknown"


def test_missing_disk(mini_node):
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    mini_node.add(u, [{"fmt": "qcow2", "src": d / "disk"}])
    f = finding(mini_node.instance(u), "disk-missing")
    assert f["severity"] == "critical" and str(d / "disk") in f["message"]


def test_unknown_layout_for_unhandled_format(mini_node):
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    qemu_img("create", "-f", "vdi", str(d / "disk"), str(MiB))
    mini_node.add(u, [{"fmt": "vdi", "src": d / "disk"}])
    inst = mini_node.instance(u)
    assert "unknown-layout" in codes(inst) and inst["disks"][0]["backend"] == "unknown"


def test_volumes_are_reported_and_their_headers_inspected(mini_node, tmp_path):
    u = mini_node.new_uuid()
    mini_node.dir(u)
    mnt = tmp_path / "mnt" / "abc"
    mnt.mkdir(parents=True)
    vol = mnt / "volume-11111111-2222-3333-4444-555555555555"
    vol.write_bytes(b"QFI\xfb" + b"\0" * 508)  # a guest wrote a qcow2 magic into it
    mini_node.add(
        u,
        [
            {"fmt": "raw", "src": vol},
            {
                "type": "block",
                "fmt": "raw",
                "src": "/dev/disk/by-path/ip-10.0.0.1:3260-iscsi-lun-1",
            },
            {"type": "network", "fmt": "raw", "src": "volumes/volume-77"},
        ],
    )
    inst = mini_node.instance(u)
    assert [d["backend"] for d in inst["disks"]] == ["volume"] * 3
    assert [d["role"] for d in inst["disks"]] == ["volume"] * 3
    # Issue #13: a file volume is never touched, but qemu opens it like any disk, so its
    # header is inspected (block and network volumes are not read from here).
    assert [(f["code"], f["disk"]) for f in inst["findings"]] == [
        ("raw-disk-has-image-header", vol.name)
    ]


def test_empty_cdrom_is_ignored_and_config_drive_is_a_disk(mini_node):
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    qemu_img("create", "-f", "raw", str(d / "disk.config"), str(MiB))
    mini_node.add(
        u,
        [
            {"fmt": "raw", "device": "cdrom", "src": None, "target": "hda"},
            {"fmt": "raw", "device": "cdrom", "src": d / "disk.config", "target": "hdb"},
        ],
    )
    inst = mini_node.instance(u)
    assert [(x["name"], x["role"], x["backend"]) for x in inst["disks"]] == [
        ("disk.config", "config", "flat")
    ]


def test_disk_info_that_is_not_json(mini_node):
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    qemu_img("create", "-f", "raw", str(d / "disk"), str(MiB))
    (d / "disk.info").write_text("{not json")
    mini_node.add(u, [{"fmt": "raw", "src": d / "disk"}])
    f = finding(mini_node.instance(u), "disk-info-invalid")
    assert f["severity"] == "warning" and "disk.info" in f["message"]


def test_selection_and_exit_status(mini_node):
    a, b = mini_node.new_uuid(), mini_node.new_uuid()
    for u in (a, b):
        d = mini_node.dir(u)
        qemu_img("create", "-f", "raw", str(d / "disk"), str(MiB))
        mini_node.add(u, [{"fmt": "raw", "src": d / "disk"}])
    data = mini_node.inspect(b)
    assert [i["uuid"] for i in data["instances"]] == [b]
    data = mini_node.inspect("instance-00000001")
    assert [i["uuid"] for i in data["instances"]] == [a]
    code, out, err = mini_node.run("inspect", "-o", "json", a, "no-such-instance")
    assert code == 1 and "no-such-instance" in err
    assert [i["uuid"] for i in json.loads(out)["instances"]] == [a]


def test_unreachable_host_is_reported_others_still_scanned(mini_node):
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    qemu_img("create", "-f", "raw", str(d / "disk"), str(MiB))
    mini_node.add(u, [{"fmt": "raw", "src": d / "disk"}])
    bad = f"test://{mini_node.root}/missing-node.xml"
    code, out, err = mini_node.run("-c", bad, "inspect", "-o", "json")
    data = json.loads(out)
    assert code == 1 and bad in err
    assert [h["uri"] for h in data["hosts"]] == [mini_node.uri, bad]
    assert data["hosts"][1]["error"] and data["hosts"][0]["error"] is None
    assert [i["uuid"] for i in data["instances"]] == [u]


def test_missing_nova_conf_is_a_clear_error(mini_node):
    mini_node.conf.unlink()
    code, out, err = mini_node.run("inspect")
    assert code == 1 and "ConfigError" in err and str(mini_node.conf) in err
    assert "Traceback" not in err + out


def test_yaml_and_table_output(mini_node):
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    qemu_img("create", "-f", "raw", str(d / "disk"), str(MiB))
    mini_node.add(u, [{"fmt": "raw", "src": d / "disk"}])
    code, out, _ = mini_node.run("inspect", "-o", "yaml")
    assert code == 0 and f"uuid: {u}" in out and "source: inferred" in out
    code, out, _ = mini_node.run("inspect")
    assert code == 0 and u in out and "flat" in out and "1.0M" in out


def test_inspect_runs_no_subprocess_per_file_disk(mini_node, monkeypatch):
    """Speed and safety: file disks are inspected in-process, never with qemu-img."""
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    qcow2_on(d / "disk", raw_base(mini_node))
    mini_node.add(u, [{"fmt": "qcow2", "src": d / "disk"}])
    calls = []
    real = subprocess.Popen

    def spy(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(subprocess, "Popen", spy)
    mini_node.inspect()
    assert calls == []
