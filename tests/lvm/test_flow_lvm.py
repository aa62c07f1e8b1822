"""inspect -> persist -> audit on LVM instances, from real lvm2 metadata (activation off)."""

from __future__ import annotations

import pytest

from storagectl.backends.lvm import LVM, parse_tag
from storagectl.model import naming
from storagectl.sandbox import SandboxSpec, create_sandbox
from tests.flowcheck import (
    assert_inspect_matches_manifest,
    assert_only_predicted_misreads,
    run,
    run_json,
)

MiB = 1 << 20


@pytest.fixture(scope="module")
def node(lvm_vg, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    # The CLI's own Runner inherits the environment: lvm2 reads the test lvm.conf.
    mp.setenv("LVM_SYSTEM_DIR", str(lvm_vg.system_dir))
    lvm = LVM(lvm_vg.runner())
    sandbox = create_sandbox(
        SandboxSpec(
            root=tmp_path_factory.mktemp("flow-lvm") / "node",
            instances=4,
            seed=21,
            kinds=("lvm", "qcow2"),
            volume_group=lvm_vg.vg,
            virtual_size=64 * MiB,
            flavors=("m1.tiny", "m1.swap"),
        ),
        lvm_vg.runner(),
    )
    yield sandbox, lvm, lvm_vg.vg
    for lv in lvm.list_volumes(lvm_vg.vg):
        lvm.remove(lvm_vg.vg, lv.name)
    mp.undo()


def test_lvm_instances_are_discovered_from_lvm_metadata(node):
    sandbox, _, vg = node
    code, data = run_json(sandbox, "inspect")
    assert code == 0
    assert_inspect_matches_manifest(sandbox, data, source="inferred")
    lvm_disks = [d for i in data["instances"] for d in i["disks"] if d["backend"] == "lvm"]
    assert lvm_disks and all(d["volume_group"] == vg for d in lvm_disks)
    # No device nodes on this host: contents are reported as not inspected, never guessed.
    # (the manifest's Nova misreads, checked above, are the only others)
    infos = [f for i in data["instances"] for f in i["findings"] if f["severity"] == "info"]
    assert {f["code"] for f in infos} == {"content-not-inspected"}


def test_persist_tags_lvs_then_audit_catches_tampering_and_orphans(node):
    sandbox, lvm, vg = node
    code, data = run_json(sandbox, "persist", "--all")
    assert code == 0 and {i["status"] for i in data["instances"]} == {"written"}
    for inst in sandbox.instances:
        for disk in inst.disks:
            if disk.backend != "lvm":
                continue
            tags = dict(parse_tag(t) for t in lvm.get_volume(vg, disk.lv).tags)
            assert tags["storagectl.instance"] == inst.uuid
            assert tags["storagectl.disk"] == disk.name
            assert tags["storagectl.format"] == "raw"
    code, data = run_json(sandbox, "inspect")
    assert_inspect_matches_manifest(sandbox, data, source="metadata")
    code, data = run_json(sandbox, "audit")
    # recorded, and still stored as Nova (qcow2) would not open them: nothing else
    assert code == 2
    assert_only_predicted_misreads(sandbox, data["findings"])
    # An LV created by hand with an instance name no domain has; a tag changed behind
    # the record's back.
    orphan = naming.lv_name("99999999-8888-7777-6666-555555555555", "disk")
    lvm.create(vg, orphan, 8 * MiB)
    victim = next(d for i in sandbox.instances for d in i.disks if d.backend == "lvm")
    lvm.remove_tags(
        vg,
        victim.lv,
        [t for t in lvm.get_volume(vg, victim.lv).tags if t.startswith("storagectl.disk=")],
    )
    code, data = run_json(sandbox, "audit")
    assert code == 2
    found = {(f["code"], f["disk"]) for f in data["findings"]}
    assert ("orphan-volume", "disk") in found
    assert any(f["code"] == "orphan-volume" and orphan in f["message"] for f in data["findings"])
    assert ("metadata-drift", victim.name) in found
    lvm.remove(vg, orphan)
    # persist leaves the unchanged record alone but repairs its mirror
    code, data = run_json(sandbox, "persist", "--all")
    assert code == 0 and {i["status"] for i in data["instances"]} == {"unchanged"}
    code, data = run_json(sandbox, "audit")
    assert code == 2
    assert_only_predicted_misreads(sandbox, data["findings"])
    code, out, _ = run(sandbox, "audit", "--quiet")
    assert code == 2 and set(out.split()) & {"nova-would-misread"}
    assert "metadata-drift" not in out and "orphan-volume" not in out
