"""The Nova view through the CLI (issue #15): ``--assume`` answers "if nova.conf said
this, which instances would break?" exactly, on a sandbox node; an encrypted LVM disk
(Nova's dm-crypt mapping) is named as Nova names it."""

from __future__ import annotations

import json

import pytest

from storagectl.sandbox import SandboxSpec, create_sandbox
from tests.flowcheck import run, run_json


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return create_sandbox(
        SandboxSpec(root=tmp_path_factory.mktemp("nova-view") / "node", instances=8, seed=11)
    )


def misread(sandbox, *assume: str) -> set[str]:  # noqa: ANN001
    args = [a for text in assume for a in ("--assume", text)]
    code, data = run_json(sandbox, "audit", *args)
    assert code in (0, 1, 2), data
    return {f["instance"] for f in data["findings"] if f["code"] == "nova-would-misread"}


def test_assume_reports_exactly_the_instances_that_would_break(sandbox) -> None:  # noqa: ANN001
    kinds = {i.uuid: i.kind for i in sandbox.instances}
    assert set(kinds.values()) == {"qcow2", "flat"}
    # this host's nova.conf (Qcow2 images): the flat instances
    assert misread(sandbox) == {u for u, k in kinds.items() if k == "flat"}
    # Flat images read every file by its disk.info entry: nothing breaks
    assert misread(sandbox, "use_cow_images = false") == set()
    assert misread(sandbox, "[libvirt] images_type=flat") == set()
    # LVM: every instance (its disks are files)
    assert misread(sandbox, "images_type=lvm", "images_volume_group=nova") == set(kinds)
    # and nova.conf itself is untouched
    assert "images_type = default" in sandbox.nova_conf.read_text()


def test_a_misspelt_assumption_is_a_usage_error(sandbox) -> None:  # noqa: ANN001
    code, _out, err = run(sandbox, "inspect", "--assume", "image_type=rbd")
    assert code == 2 and "storagectl reads no nova.conf option image_type" in err
    code, _out, err = run(sandbox, "audit", "--assume", "image_type=rbd")
    assert code == 3, err  # audit's usage errors are Nagios UNKNOWN


def test_an_encrypted_lv_is_opened_through_its_dmcrypt_mapping(mini_node) -> None:  # noqa: ANN001
    mini_node.conf.write_text(
        mini_node.conf.read_text() + "[libvirt]\nimages_type = lvm\nimages_volume_group = vg0\n"
    )
    u = mini_node.new_uuid()
    dev = f"/dev/mapper/{u}_disk-dmcrypt"
    mini_node.add(u, [{"type": "block", "fmt": "raw", "src": dev}])
    (disk,) = mini_node.instance(u)["disks"]
    assert (disk["backend"], disk["volume_group"], disk["volume"], disk["path"]) == (
        "lvm",
        "vg0",
        f"{u}_disk",
        dev,
    )
    assert disk["nova"]["location"] == dev and disk["nova"]["matches"]
    # Nova's Qcow2 images would look for a file instead
    (disk,) = mini_node.instance(u, "--assume", "images_type=qcow2")["disks"]
    assert disk["nova"]["location"].endswith(f"{u}/disk") and not disk["nova"]["matches"]
    # another instance's mapping, or a mapping of no Nova LV, is a volume
    other = mini_node.new_uuid()
    mini_node.add(other, [{"type": "block", "fmt": "raw", "src": dev}])
    (disk,) = mini_node.instance(other)["disks"]
    assert disk["backend"] == "volume" and disk["nova"] is None
    # never recorded (the record names the LV: a move would copy the ciphertext)
    code, out, err = mini_node.run("persist", "-o", "json", u)
    (result,) = json.loads(out)["instances"]
    assert code == 1 and result["status"] == "refused", out  # here: the LV is missing
    assert "Traceback" not in err and not (mini_node.instances / u / "storage.yaml").exists()


def test_a_dmcrypt_disk_is_never_moved(mini_node) -> None:  # noqa: ANN001
    from storagectl.backends.base import Refusal
    from storagectl.backends.lvm import LVMBackend, LVMLocation, dmcrypt_device
    from storagectl.host.process import Runner

    loc = LVMLocation("vg0", "u_disk", device=dmcrypt_device("u_disk"))
    with pytest.raises(Refusal, match="storagectl does not move encrypted disks"):
        LVMBackend(Runner()).check(loc, target=False)
    assert json.dumps(loc.to_record())  # the journal can name it
    # and never recorded: a record names the LV, and a move from it would copy ciphertext
    from storagectl.backends.lvm import EncryptedDiskRefused
    from storagectl.model.layout import Backend, DiskLayout, Role

    disk = DiskLayout("disk", Role.ROOT, "vda", Backend.LVM, "raw", **loc.disk_fields())
    with pytest.raises(EncryptedDiskRefused, match="does not record or move encrypted disks"):
        LVMBackend.record_location(disk)
    plain = LVMLocation("vg0", "u_disk")
    disk = DiskLayout("disk", Role.ROOT, "vda", Backend.LVM, "raw", **plain.disk_fields())
    assert LVMBackend.record_location(disk) == {"volume_group": "vg0", "volume": "u_disk"}


def test_prometheus_counts_the_instances_nova_would_misread(sandbox, tmp_path) -> None:  # noqa: ANN001
    prom = tmp_path / "storagectl.prom"
    code, _out, err = run(sandbox, "audit", "--prometheus", str(prom))
    assert code == 2, err
    flat = sum(1 for i in sandbox.instances if i.kind == "flat")
    text = prom.read_text()
    assert f"storagectl_nova_would_misread_instances {flat}\n" in text and flat
    disks = sum(1 for i in sandbox.instances for d in i.disks if d.nova_misread)
    assert f'storagectl_findings{{severity="critical",code="nova-would-misread"}} {disks}\n' in text
    run(sandbox, "audit", "--prometheus", str(prom), "--assume", "images_type=flat")
    assert "storagectl_nova_would_misread_instances 0\n" in prom.read_text()
