"""audit through the real CLI: each code produced by a real change to a real node."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time

import yaml

from storagectl.host.locks import host_lock
from tests.functional.conftest import qemu_img
from tests.functional.test_persist import legacy_instance, persist_json

MiB = 1 << 20


def audit(node, *args, prom=None):
    extra = ["--prometheus", str(prom)] if prom else []
    return node.run("--lock-path", str(node.root / "locks"), "audit", *extra, *args)


def audit_json(node, *args, prom=None):
    code, out, err = audit(node, "-o", "json", *args, prom=prom)
    return code, json.loads(out) if out else None, err


def metric(text, name):
    """The value of an unlabelled sample ``name`` in a textfile."""
    (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
    return line.split()[1]


def codes_of(data, code):
    return [f for f in data["findings"] if f["code"] == code]


def recorded_node(node, n=2, flat=False):
    uuids = [legacy_instance(node, flat=flat) for _ in range(n)]
    code, res, _ = persist_json(node, "--all")
    assert code == 0 and all(r["status"] == "written" for r in res.values())
    return uuids


def test_clean_node_exits_0_and_quiet_prints_nothing(mini_node, tmp_path):
    recorded_node(mini_node)
    code, out, err = audit(mini_node, "--quiet")
    assert (code, out, err) == (0, "", "")
    prom = tmp_path / "storagectl.prom"
    code, data, _ = audit_json(mini_node, prom=prom)
    assert code == 0 and data["summary"]["status"] == 0
    assert data["summary"]["instances_by_source"] == {"metadata": 2, "inferred": 0}
    assert all(f["severity"] == "info" for f in data["findings"])
    text = prom.read_text()
    assert "storagectl_audit_up 1" in text and "storagectl_audit_status 0" in text
    assert 'storagectl_instances{source="metadata"} 2' in text
    assert 'storagectl_findings{severity="critical",code="metadata-drift"} 0' in text
    assert "storagectl_audit_duration_seconds " in text
    last = float(metric(text, "storagectl_audit_last_success_timestamp_seconds"))
    assert abs(last - time.time()) < 60


def test_metadata_missing_is_a_warning(mini_node):
    recorded_node(mini_node, 1)
    u = legacy_instance(mini_node)
    code, data, _ = audit_json(mini_node)
    assert code == 1
    (f,) = codes_of(data, "metadata-missing")
    assert f["instance"] == u and f["severity"] == "warning"
    code, out, _ = audit(mini_node, "--quiet")
    assert code == 1 and "metadata-missing" in out


def test_disk_converted_behind_the_records_back(mini_node):
    (u,) = recorded_node(mini_node, 1, flat=True)
    d = mini_node.instances / u
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(d / "disk"), str(d / "disk.new"))
    (d / "disk.new").rename(d / "disk")
    mini_node.domains[-1] = mini_node.domains[-1].replace("type='raw'", "type='qcow2'", 1)
    code, data, _ = audit_json(mini_node)
    assert code == 2
    drift = codes_of(data, "metadata-drift")
    assert any("recorded as raw" in f["message"] and f["disk"] == "disk" for f in drift)


def test_disk_removed_added_and_shrunk(mini_node):
    (u,) = recorded_node(mini_node, 1, flat=True)
    d = mini_node.instances / u
    qemu_img("resize", "-f", "raw", "--shrink", str(d / "disk"), str(4 * MiB))
    qemu_img("create", "-f", "raw", str(d / "disk.eph0"), str(MiB))
    dom = mini_node.domains[-1]
    # drop disk.local, add disk.eph0
    mini_node.domains[-1] = dom.replace(f"{d}/disk.local", f"{d}/disk.eph0")
    code, data, _ = audit_json(mini_node)
    assert code == 2
    msgs = {(f["disk"], f["message"].split(" ")[-1]) for f in codes_of(data, "metadata-drift")}
    kinds = " ".join(f["message"] for f in codes_of(data, "metadata-drift"))
    assert "shrank from 8388608 bytes (recorded) to 4194304" in kinds
    assert "no longer in the domain XML" in kinds and "not in the record" in kinds
    assert {m[0] for m in msgs} == {"disk", "disk.local", "disk.eph0"}


def test_orphans_and_orphan_metadata(mini_node):
    a, b = recorded_node(mini_node, 2)
    # b's domain is undefined (its record stays behind); a stray dir and a resize leftover
    mini_node.domains.pop()
    stray = mini_node.instances / "11111111-2222-3333-4444-555555555555"
    stray.mkdir()
    (mini_node.instances / f"{a}_resize").mkdir()
    code, data, _ = audit_json(mini_node)
    assert code == 1
    (om,) = codes_of(data, "orphan-metadata")
    assert om["instance"] == b and "storage.yaml" in om["message"]
    ov = {f["instance"]: f["message"] for f in codes_of(data, "orphan-volume")}
    assert set(ov) == {"11111111-2222-3333-4444-555555555555", a}
    assert "resize leftover" in ov[a]


def test_another_hosts_recorded_directory_is_counted_not_orphaned(mini_node):
    """A shared instances_path (NFS): a directory without a domain here whose record names
    another compute host is that host's instance - counted (info), not an orphan; audit
    --complete (every host sharing the path was scanned) reports it."""
    a, b = recorded_node(mini_node, 2)
    mini_node.domains.pop()  # b now lives elsewhere as far as this host can see
    record = mini_node.instances / b / "storage.yaml"
    text = record.read_text()
    host = yaml.safe_load(text)["instance"]["host"]
    record.write_text(text.replace(f"host: {host}", "host: cn-elsewhere-17"))
    code, data, _ = audit_json(mini_node)
    assert code == 0, data["findings"]
    assert codes_of(data, "orphan-metadata") == [] and codes_of(data, "orphan-volume") == []
    (unowned,) = codes_of(data, "unowned-volumes")
    assert unowned["severity"] == "info" and unowned["instance"] is None
    assert "1 instance directory" in unowned["message"]
    assert str(mini_node.instances) in unowned["message"]
    code, data, _ = audit_json(mini_node, "--complete")
    assert code == 1
    (om,) = codes_of(data, "orphan-metadata")
    assert om["instance"] == b and codes_of(data, "unowned-volumes") == []


def test_shared_instances_path_other_hosts_and_unrecorded_dirs(mini_node, monkeypatch, tmp_path):
    """instances_path on a network filesystem: a record-less directory without a domain
    may be any host's, and a resize leftover whose record names another host is that
    host's - both counted (info, and a Prometheus gauge), not orphans; --complete reports
    them. A domainless directory recorded as this host's is still reported."""
    monkeypatch.setattr("storagectl.audit.ownership.is_shared_path", lambda path: True)
    _a, b, c, d = recorded_node(mini_node, 4)
    del mini_node.domains[1:]  # only a is still defined here
    (mini_node.instances / b / "storage.yaml").unlink()  # b: a directory without record
    record = mini_node.instances / c / "storage.yaml"
    host = yaml.safe_load(record.read_text())["instance"]["host"]
    record.write_text(record.read_text().replace(f"host: {host}", "host: cn-elsewhere-17"))
    (mini_node.instances / c).rename(mini_node.instances / f"{c}_resize")
    prom = tmp_path / "storagectl.prom"
    code, data, _ = audit_json(mini_node, prom=prom)
    assert code == 1, data["findings"]
    assert codes_of(data, "orphan-volume") == []
    assert [f["instance"] for f in codes_of(data, "orphan-metadata")] == [d]
    (unowned,) = codes_of(data, "unowned-volumes")
    assert "2 instance directories" in unowned["message"]
    assert "1 recorded as other hosts'" in unowned["message"]
    assert "1 without a record on a network filesystem" in unowned["message"]
    where = f"dir:{mini_node.instances}"
    assert data["summary"]["unowned"] == {where: 2}
    assert f'storagectl_unowned_volumes{{where="{where}"}} 2' in prom.read_text()

    code, data, _ = audit_json(mini_node, "--complete")
    assert code == 1 and codes_of(data, "unowned-volumes") == []
    assert data["summary"]["unowned"] == {}
    assert {f["instance"] for f in codes_of(data, "orphan-volume")} == {b, c}
    assert [f["instance"] for f in codes_of(data, "orphan-metadata")] == [d]


def test_unsafe_and_unused_cache_entries(mini_node, tmp_path):
    recorded_node(mini_node, 1)
    base = mini_node.base
    # CVE-2022-47951: a VMDK descriptor whose extent names a host file
    (base / ("d" * 40)).write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n\n# Extent description\n'
        'RW 2048 FLAT "/etc/hostname" 0\n\nddb.virtualHWVersion = "4"\n'
    )
    qemu_img("create", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", str(base / ("e" * 40)))
    qemu_img("create", "-f", "qed", str(base / ("f" * 40)), str(MiB))
    qemu_img("create", "-f", "raw", str(base / ("0" * 40)), str(MiB))
    code, data, _ = audit_json(mini_node)
    assert code == 2
    unsafe = {f["disk"]: f["message"] for f in codes_of(data, "base-image-unsafe")}
    assert set(unsafe) == {"d" * 40, "e" * 40, "f" * 40}
    assert "/etc/passwd" in unsafe["e" * 40]
    unused = {f["disk"] for f in codes_of(data, "base-image-unused")}
    assert {"0" * 40, "d" * 40, "e" * 40, "f" * 40} <= unused
    assert all(f["severity"] == "info" for f in codes_of(data, "base-image-unused"))


def test_unreachable_host_is_status_3_and_keeps_last_success(mini_node, tmp_path):
    recorded_node(mini_node, 1)
    prom = tmp_path / "p.prom"
    assert audit(mini_node, prom=prom)[0] == 0
    before = metric(prom.read_text(), "storagectl_audit_last_success_timestamp_seconds")
    time.sleep(1.1)
    bad = f"test://{mini_node.root}/nope.xml"
    code, out, err = mini_node.run(
        "--lock-path", str(mini_node.root / "locks"), "-c", bad, "audit", "--prometheus", str(prom)
    )
    assert code == 3 and bad in err
    text = prom.read_text()
    assert "storagectl_audit_up 0" in text and "storagectl_audit_status 3" in text
    assert metric(text, "storagectl_audit_last_success_timestamp_seconds") == before


def test_unreadable_config_is_status_3(mini_node):
    mini_node.conf.write_text("[libvirt]\nimages_type = zfs\n")
    code, _, err = audit(mini_node)
    assert code == 3 and "images_type" in err and "Traceback" not in err


def _hold(lock_path, ready, release):
    with host_lock(lock_path, "audit"):
        ready.set()
        release.wait(30)


def test_second_audit_exits_promptly_with_3(mini_node):
    recorded_node(mini_node, 1)
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(str(mini_node.root / "locks"), ready, release))
    p.start()
    try:
        assert ready.wait(10)
        start = time.monotonic()
        code, _, err = audit(mini_node)
        assert code == 3 and "another storagectl audit is running" in err
        assert time.monotonic() - start < 5
    finally:
        release.set()
        p.join(10)


def test_audit_writes_nothing_but_its_report(mini_node, tmp_path):
    recorded_node(mini_node, 2)
    legacy_instance(mini_node)
    snapshot = tmp_path / "before"
    shutil.copytree(mini_node.instances, snapshot, symlinks=True)
    audit(mini_node, prom=tmp_path / "x.prom")
    for path in snapshot.rglob("*"):
        twin = mini_node.instances / path.relative_to(snapshot)
        assert twin.exists()
        if path.is_file():
            assert path.read_bytes() == twin.read_bytes(), twin
    assert sorted(p.name for p in mini_node.instances.rglob("*")) == sorted(
        p.name for p in snapshot.rglob("*")
    )
