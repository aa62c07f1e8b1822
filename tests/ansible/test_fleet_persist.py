"""fleet_persist.yml over two hosts: check mode writes nothing and shows the records it
would write; the real run writes every record; a second run changes nothing."""

from __future__ import annotations

from tests.ansible.conftest import Fleet


def test_persist_check_then_write_then_idempotent(fleet: Fleet) -> None:
    cn1, cn2 = fleet.add("cn1"), fleet.add("cn2")
    hosts = (cn1, cn2)

    run = fleet.play("fleet_persist.yml", "--check", "--diff")
    assert run.rc == 0, run.output
    assert {h: run.recap[h]["changed"] for h in ("cn1", "cn2")} == {"cn1": 1, "cn2": 1}
    assert all(h.record(u) is None for h in hosts for u in h.uuids)
    # the diff is the record that would be written, per instance
    for h in hosts:
        for u in h.uuids:
            assert f"{u} (record that would be written)" in run.output
    assert "3 record(s) would be written, 0 unchanged" in run.output

    run = fleet.play("fleet_persist.yml", "--diff")
    assert run.rc == 0, run.output
    assert {h: run.recap[h]["changed"] for h in ("cn1", "cn2")} == {"cn1": 1, "cn2": 1}
    for h in hosts:
        assert len(h.uuids) == 3
        for u in h.uuids:
            record = h.record(u)
            assert record["instance"]["uuid"] == u and record["obtained"]["how"] == "inferred"
            assert f"{u} (record written)" in run.output
        assert h.storagectl("show", h.uuids[0], "-o", "json").returncode == 0
    assert "3 record(s) written, 0 unchanged" in run.output
    before = {
        (h.name, u): (h.instances / u / "storage.yaml").read_bytes() for h in hosts for u in h.uuids
    }

    run = fleet.play("fleet_persist.yml")
    assert run.rc == 0, run.output
    assert {h: (run.recap[h]["changed"], run.recap[h]["failed"]) for h in ("cn1", "cn2")} == {
        "cn1": (0, 0),
        "cn2": (0, 0),
    }
    assert "0 record(s) written, 3 unchanged" in run.output
    assert before == {
        (h.name, u): (h.instances / u / "storage.yaml").read_bytes() for h in hosts for u in h.uuids
    }
