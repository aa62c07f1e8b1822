"""fleet report over the real audit JSON of three sandbox nodes (one of them broken), a
host whose audit could not run and a file that is not an audit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from storagectl.cli import cli
from storagectl.record import record as rec
from storagectl.sandbox import Sandbox, SandboxSpec, create_sandbox
from tests.flowcheck import run


def audit_to(sandbox: Sandbox, path: Path, *, uri: str | None = None) -> int:
    """``storagectl audit -o json --prometheus path.prom > path`` on the node (``uri``:
    another libvirt URI)."""
    args = ["-c", uri or sandbox.uri, "--nova-conf", str(sandbox.nova_conf)]
    args += ["--lock-path", str(sandbox.root / "locks"), "--log-file", str(sandbox.root / "log")]
    prom = ["--prometheus", str(sandbox.root / "audit.prom")]
    res = CliRunner().invoke(cli, [*args, "audit", "-o", "json", *prom])
    assert res.stdout, res.stderr
    path.write_text(res.stdout)
    return res.exit_code


def keep_a_retained_source(box: Sandbox) -> tuple[str, int]:
    """A recorded instance whose record keeps its old copy, as a migration leaves it."""
    uuid = next(i.uuid for i in box.instances if i.state == "shutoff")
    inst_dir = box.instances_path / uuid
    record = rec.read_record(inst_dir, expect_uuid=uuid)
    disk = next(d for d in record.disks if d.name == "disk")
    kept = inst_dir / f"disk.retained-{disk.backend.value}"
    kept.write_bytes(b"\x01" * 3 * 65536)
    item = {
        "disk": "disk",
        "backend": disk.backend.value,
        "format": disk.format,
        "path": str(kept),
        "retained_at": "2026-11-24T00:10:00Z",
        "migrated_to": "flat",
    }
    rec.write_record(inst_dir, dataclasses.replace(record, retained_sources=(item,)))
    return uuid, kept.stat().st_blocks * 512


def interrupt_a_migration(box: Sandbox) -> tuple[str, int]:
    """A ``.migrating`` copy whose journal is gone: audit's migration-interrupted."""
    uuid = next(i.uuid for i in box.instances if i.state == "running")
    copy = box.instances_path / uuid / "disk.migrating"
    copy.write_bytes(b"\x02" * 2 * 65536)
    return uuid, copy.stat().st_blocks * 512


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fleet")
    out = root / "reports"
    out.mkdir()
    # cn-a: qcow2 instances only, recorded, with a retained source and an interrupted
    # migration (a warning)
    a = create_sandbox(SandboxSpec(root=root / "a", instances=4, seed=11, kinds=("qcow2",)))
    code, _, err = run(a, "persist", "--all")
    assert code == 0, err
    retained = keep_a_retained_source(a)
    interrupted = interrupt_a_migration(a)
    # cn-b: a legacy node never recorded: Nova would misread its flat disks (critical)
    b = create_sandbox(SandboxSpec(root=root / "b", instances=3, seed=12))
    # cn-c: its hypervisor cannot be reached: the audit itself says status 3
    c = create_sandbox(SandboxSpec(root=root / "c", instances=1, seed=13))
    statuses = {
        "cn-a": audit_to(a, out / "cn-a.json"),
        "cn-b": audit_to(b, out / "cn-b.json"),
        "cn-c": audit_to(c, out / "cn-c.json", uri=f"test://{root}/c/gone.xml"),
    }
    # cn-d: Ansible could not run the audit; cn-e: a truncated copy
    wrapper = {"host": "cn-d", "failed": True, "status": 3, "msg": "UNREACHABLE: ssh timed out"}
    (out / "cn-d.json").write_text(json.dumps(wrapper))
    (out / "cn-e.json").write_text((out / "cn-b.json").read_text()[:100])
    return {
        "dir": out,
        "textfile": (a.root / "audit.prom").read_text(),
        "statuses": statuses,
        "retained": retained,
        "interrupted": interrupted,
        "audits": {h: json.loads((out / f"{h}.json").read_text()) for h in statuses},
    }


def fleet(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, ["fleet", "report", *args])
    assert not res.exception or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.stdout, res.stderr


def test_the_three_real_audits_are_what_the_report_is_built_on(reports: dict) -> None:
    assert reports["statuses"] == {"cn-a": 1, "cn-b": 2, "cn-c": 3}
    audits = reports["audits"]
    assert {f["code"] for f in audits["cn-a"]["findings"]} >= {"migration-interrupted"}
    assert audits["cn-c"]["summary"]["errors"][0].startswith("cannot scan test://")
    # the bytes the audit JSON now carries
    uuid, held = reports["retained"]
    assert audits["cn-a"]["summary"]["retained_sources"] == {
        uuid: {"sources": 1, "bytes": held, "unsized": 0}
    }
    lines = reports["textfile"].splitlines()
    assert "storagectl_retained_sources 1" in lines
    assert f"storagectl_retained_sources_bytes {held}" in lines
    uuid, held = reports["interrupted"]
    assert audits["cn-a"]["summary"]["interrupted_migrations"] == {uuid: held}
    assert f'storagectl_migration_interrupted_bytes{{instance="{uuid}"}} {held}' in lines


def test_json_merge_order_counts_and_host_on_every_finding(reports: dict) -> None:
    code, out, err = fleet(str(reports["dir"]), "-o", "json")
    assert (code, err) == (3, "")
    data = json.loads(out)
    hosts = data["hosts"]
    # UNKNOWNs first (by name), then the critical host, then the warning one
    assert [(h["host"], h["status"]) for h in hosts] == [
        ("cn-c", 3), ("cn-d", 3), ("cn-e", 3), ("cn-b", 2), ("cn-a", 1),
    ]  # fmt: skip
    problems = {h["host"]: h["problem"] for h in hosts}
    assert problems["cn-c"].startswith("audit incomplete: cannot scan test://")
    assert problems["cn-d"] == "could not audit: UNREACHABLE: ssh timed out"
    assert problems["cn-e"].startswith(f"{reports['dir'] / 'cn-e.json'}: not JSON")
    audits = reports["audits"]
    every = [(h, f) for h, a in audits.items() for f in a["findings"]]
    assert len(data["findings"]) == len(every)
    assert {f["host"] for f in data["findings"]} == {h for h, f in every}
    assert {"cn-a", "cn-b"} <= {h for h, f in every}
    for host, f in every:
        assert {**f, "host": host} in [{k: v for k, v in g.items() if k != "audit_host"}
                                       for g in data["findings"]]  # fmt: skip
    for code_, entry in data["findings_by_code"].items():
        want = {h: sum(1 for f in a["findings"] if f["code"] == code_) for h, a in audits.items()}
        assert entry["hosts"] == {h: n for h, n in want.items() if n}
        assert entry["total"] == sum(want.values())
    s = data["summary"]
    assert s["hosts_by_status"] == {"ok": 0, "warning": 1, "critical": 1, "unknown": 3}
    assert s["unrecorded_instances"] == 3  # cn-b's, never persisted
    assert s["instances"] == 4 + 3  # cn-c could list none
    assert s["retained_bytes"] == reports["retained"][1] and s["retained_sources"] == 1
    assert (s["interrupted_migrations"], s["interrupted_bytes"]) == (1, reports["interrupted"][1])


def test_table_names_each_host_worst_first(reports: dict) -> None:
    code, out, err = fleet(str(reports["dir"]))
    assert (code, err) == (3, "")
    rows = [line.split() for line in out.splitlines()]
    assert [r[1] for r in rows[1:6]] == ["cn-c", "cn-d", "cn-e", "cn-b", "cn-a"]
    assert rows[5][:2] == ["warning", "cn-a"]
    assert out.splitlines()[-1].endswith("-> status 3")


def test_exit_status_is_the_worst_of_the_hosts_given(reports: dict) -> None:
    d = reports["dir"]
    assert fleet(str(d / "cn-a.json"))[0] == 1
    assert fleet(str(d / "cn-a.json"), str(d / "cn-b.json"))[0] == 2
    assert fleet(str(d / "cn-b.json"), str(d / "cn-e.json"))[0] == 3
