"""convert_hosts.yml: a rolling conversion of two hosts to flat, one host at a time.

The hosts are sandbox nodes of a qcow2 host (nova.conf: images_type=default,
use_cow_images=True) whose instances are persisted first with fleet_persist.yml. The
migration runs the real storagectl over real files and qemu-img; only the hypervisor a
switch redefines domains in is a FakeLibvirt (tests/ansible/fake_host_storagectl.py).
"""

from __future__ import annotations

import re

from tests.ansible.conftest import Fleet, Host

FLIPPED = re.compile(r"^\[libvirt\]\n(?:.*\n)*?images_type = flat$", re.MULTILINE)


def snapshot(host: Host) -> dict[str, tuple]:
    """Every file of the host but its log and lock files: small ones by content, disks
    (sparse, 1 GiB virtual) by inode, size and mtime - a write, rename or new copy changes
    one of them."""
    out = {}
    locks = host.root / "locks"
    for p in sorted(host.root.rglob("*")):
        if p.is_file() and p.suffix != ".log" and locks not in p.parents:
            st = p.stat()
            small = st.st_size < (1 << 20)
            out[str(p.relative_to(host.root))] = (
                p.read_bytes() if small else (st.st_ino, st.st_size, st.st_mtime_ns)
            )
    return out


def backends(host: Host) -> dict[str, list[str]]:
    return {u: [d["backend"] for d in host.record(u)["disks"]] for u in host.uuids}


def persisted(fleet: Fleet) -> None:
    run = fleet.play("fleet_persist.yml")
    assert run.rc == 0, run.output
    for h in fleet.hosts.values():
        assert all(h.record(u) for u in h.uuids)


def test_a_clean_rolling_conversion_converts_both_hosts(fleet: Fleet) -> None:
    cn1, cn2 = fleet.add("cn1"), fleet.add("cn2")
    persisted(fleet)
    for h in (cn1, cn2):
        assert "qcow2" in {b for disks in backends(h).values() for b in disks}
        code, _ = h.audit()
        assert code == 2  # the flat instance: Nova (qcow2) would misread it today

    run = fleet.play("convert_hosts.yml", convert_to="flat")
    assert run.rc == 0, run.output
    # serial 1: cn1's whole play, then cn2's
    assert run.output.index("cn1: converted to flat") < run.output.index("cn2: converted")
    for h in (cn1, cn2):
        assert run.recap[h.name]["failed"] == 0 and run.recap[h.name]["changed"] >= 3
        assert {b for disks in backends(h).values() for b in disks} <= {"flat"}
        conf = h.conf.read_text()
        assert FLIPPED.search(conf) and "images_type = default" not in conf, conf
        assert list(h.conf.parent.glob("nova.conf.*~")), "lineinfile keeps a backup"
        assert h.restarted.exists()
        code, data = h.audit()
        assert code == 0, data["findings"]
        assert "nova-would-misread" not in data["summary"]["findings_by_code"]

    # a second run finds nothing to move and nothing to set: no restart, changed=0
    for h in (cn1, cn2):
        h.restarted.unlink()
    run = fleet.play("convert_hosts.yml", convert_to="flat")
    assert run.rc == 0, run.output
    assert {h: run.recap[h]["changed"] for h in ("cn1", "cn2")} == {"cn1": 0, "cn2": 0}
    assert not cn1.restarted.exists() and not cn2.restarted.exists()


def test_the_rollout_stops_when_the_first_hosts_audit_is_not_clean(fleet: Fleet) -> None:
    # cn1's operator keeps an override file that still says qcow2: the flip of nova.conf
    # does not reach Nova, and only the audit after it can tell
    cn1 = fleet.add("cn1")
    override = cn1.root / "etc" / "nova" / "nova.conf.d-99-override.conf"
    override.write_text("[libvirt]\nimages_type = qcow2\n")
    cn1.vars["storagectl_nova_conf"].append(str(override))
    cn2 = fleet.add("cn2")
    persisted(fleet)
    cn2_before = snapshot(cn2)
    cn1_backends = backends(cn1)

    run = fleet.play("convert_hosts.yml", convert_to="flat")
    assert run.rc != 0, run.output
    assert "cn1: after the conversion Nova would misread 3 instance(s)" in run.output
    assert "the rollout stops here" in run.output
    assert run.recap["cn1"]["failed"] == 1
    assert "cn2" not in run.recap, "cn2's batch never started"
    # cn1 was converted and flipped (the flip that did not take) and restarted; Nova, still
    # qcow2 through the override, would now misread all three (the flat one as before)
    assert {b for disks in backends(cn1).values() for b in disks} == {"flat"}
    assert backends(cn1) != cn1_backends
    assert FLIPPED.search(cn1.conf.read_text()) and cn1.restarted.exists()
    code, data = cn1.audit()
    assert code == 2 and data["summary"]["findings_by_code"]["nova-would-misread"] > 0
    # cn2: not a byte changed, not restarted
    assert snapshot(cn2) == cn2_before
    assert not cn2.restarted.exists()


def test_a_plan_that_would_leave_misread_instances_stops_before_any_change(
    fleet: Fleet,
) -> None:
    # to qcow2, offline: cn1's flat instance runs, is not moved, and Nova (qcow2) would
    # misread it
    cn1 = fleet.add("cn1", running=True)
    cn2 = fleet.add("cn2")
    persisted(fleet)
    before = {h.name: snapshot(h) for h in (cn1, cn2)}

    run = fleet.play("convert_hosts.yml", convert_to="qcow2", convert_offline=True)
    assert run.rc != 0, run.output
    assert (
        "cn1: after these moves Nova would still misread instance-00000102 with [libvirt] "
        "images_type = qcow2" in run.output
    )
    assert "nothing was changed, the rollout stops here" in run.output
    assert run.recap["cn1"]["failed"] == 1
    assert "cn2" not in run.recap
    assert {h.name: snapshot(h) for h in (cn1, cn2)} == before
    assert not cn1.restarted.exists() and not cn2.restarted.exists()


def test_a_failed_move_stops_the_rollout_with_the_host_unchanged(fleet: Fleet) -> None:
    # to qcow2, live: cn1's running instance moves by libvirt block copy, which this
    # hypervisor (the fake) refuses - storagectl rolls the move back
    cn1 = fleet.add("cn1", running=True)
    cn2 = fleet.add("cn2")
    persisted(fleet)
    records = {u: cn1.record(u) for u in cn1.uuids}
    conf = {h.name: h.conf.read_bytes() for h in (cn1, cn2)}
    cn2_before = snapshot(cn2)

    run = fleet.play("convert_hosts.yml", convert_to="qcow2")
    assert run.rc != 0, run.output
    assert "Convert the host (migrate --all --yes)" in run.output
    assert "failed at mirror" in run.output and "rolled back" in run.output
    assert run.recap["cn1"]["failed"] == 1 and "cn2" not in run.recap
    assert {u: cn1.record(u) for u in cn1.uuids} == records
    assert {h.name: h.conf.read_bytes() for h in (cn1, cn2)} == conf
    assert not cn1.restarted.exists()
    assert snapshot(cn2) == cn2_before and not cn2.restarted.exists()
