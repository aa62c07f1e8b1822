"""fleet report: merging per-host audit JSON - order, counts, hosts, hostile files, exit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from storagectl.audit.retained import retained_held
from storagectl.cli import cli
from storagectl.fleet import sources
from storagectl.fleet.report import FleetUsageError, fleet_report, input_files
from storagectl.fleet.sources import read_audit

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"


def finding(severity: str, code: str, instance: str | None = U1, host: str = "vm") -> dict:
    return {
        "severity": severity,
        "code": code,
        "host": host,
        "instance": instance,
        "disk": "disk" if instance else None,
        "message": f"{code} of {instance}",
    }


def audit_json(*findings: dict, status: int | None = None, **summary: object) -> dict:
    ranks = {"critical": 2, "warning": 1, "info": 0}
    worst = max((ranks[f["severity"]] for f in findings), default=0)
    return {
        "findings": list(findings),
        "summary": {
            "status": worst if status is None else status,
            "instances": 3,
            "instances_by_source": {"metadata": 2, "inferred": 1},
            "errors": [],
            **summary,
        },
    }


def write(directory: Path, name: str, data: object) -> Path:
    path = directory / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, ["fleet", "report", *args])
    assert not res.exception or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.stdout, res.stderr


def test_worst_hosts_first_by_status_then_critical_then_warning_count(tmp_path: Path) -> None:
    write(tmp_path, "ok.json", audit_json(finding("info", "base-image-unused", None)))
    write(tmp_path, "warn.json", audit_json(finding("warning", "metadata-missing")))
    write(tmp_path, "crit1.json", audit_json(finding("critical", "disk-missing")))
    two = [finding("critical", "disk-missing", u) for u in (U1, U2)]
    write(tmp_path, "crit2.json", audit_json(*two))
    more = [*two, finding("warning", "metadata-missing")]
    write(tmp_path, "crit2w.json", audit_json(*more))
    write(tmp_path, "down.json", {"host": "down", "failed": True, "status": 3, "msg": "x"})
    report = fleet_report([str(tmp_path)])
    assert [h.host for h in report.hosts] == ["down", "crit2w", "crit2", "crit1", "warn", "ok"]
    assert [h.status for h in report.hosts] == [3, 2, 2, 2, 1, 0]
    assert report.status == 3


def test_counts_per_code_and_host_and_every_finding_names_its_host(tmp_path: Path) -> None:
    a = [finding("critical", "disk-missing", U1), finding("critical", "disk-missing", U2)]
    write(tmp_path, "cn-a.json", audit_json(*a, finding("warning", "metadata-missing")))
    write(tmp_path, "cn-b.json", audit_json(finding("critical", "disk-missing", host="cn-b")))
    code, out, _ = run(str(tmp_path), "-o", "json")
    data = json.loads(out)
    assert code == 2 and data["status"] == 2
    assert data["findings_by_code"] == {
        "disk-missing": {"total": 3, "hosts": {"cn-a": 2, "cn-b": 1}},
        "metadata-missing": {"total": 1, "hosts": {"cn-a": 1}},
    }
    assert [(f["host"], f["code"]) for f in data["findings"]] == [
        ("cn-a", "disk-missing"),
        ("cn-a", "disk-missing"),
        ("cn-a", "metadata-missing"),
        ("cn-b", "disk-missing"),
    ]
    # the audit's own host name (libvirt's) is kept where it is another name
    assert [f.get("audit_host") for f in data["findings"]] == ["vm", "vm", "vm", None]
    assert list(data["findings"][0])[:3] == ["severity", "code", "host"]
    s = data["summary"]
    assert s["hosts"] == 2 and s["hosts_by_status"] == {
        "ok": 0,
        "warning": 0,
        "critical": 2,
        "unknown": 0,
    }
    assert s["findings_by_severity"] == {"critical": 3, "warning": 1, "info": 0}
    assert (s["instances"], s["unrecorded_instances"]) == (6, 2)


def test_host_is_the_files_host_key_else_its_stem(tmp_path: Path) -> None:
    write(tmp_path, "whatever.json", {**audit_json(), "host": "cn-17.example.org"})
    write(tmp_path, "cn-18.json", audit_json())
    report = fleet_report([str(tmp_path)])
    assert sorted(h.host for h in report.hosts) == ["cn-17.example.org", "cn-18"]


def test_retained_and_interrupted_bytes_are_summed_and_older_audits_say_unknown(
    tmp_path: Path,
) -> None:
    held = {U1: {"sources": 2, "bytes": 4096, "unsized": 1}, U2: {"sources": 1, "bytes": 100}}
    write(
        tmp_path,
        "new.json",
        audit_json(retained_sources=held, interrupted_migrations={U1: 8192, U2: 8}),
    )
    write(tmp_path, "old.json", audit_json())  # an audit from before these keys
    data = fleet_report([str(tmp_path)]).to_dict()
    hosts = {h["host"]: h for h in data["hosts"]}
    assert hosts["new"]["retained_sources"] == 3 and hosts["new"]["retained_bytes"] == 4196
    assert hosts["new"]["retained_unsized"] == 1
    assert hosts["new"]["interrupted_migrations"] == {U1: 8192, U2: 8}
    assert hosts["old"]["retained_bytes"] is None and hosts["old"]["interrupted_migrations"] is None
    s = data["summary"]
    assert (s["retained_sources"], s["retained_bytes"]) == (3, 4196)
    assert (s["interrupted_migrations"], s["interrupted_bytes"]) == (2, 8200)
    code, out, _ = run(str(tmp_path))
    assert code == 0
    rows = {line.split()[1]: line.split() for line in out.splitlines()[1:3]}
    assert rows["new"][7:11] == ["4.1K", "2", "(8.0K)", "-"]
    assert rows["old"][7:10] == ["-", "-", "-"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("not json {", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("[1, 2]", "not a JSON object"),
        ('{"findings": {}, "summary": {}}', "neither the output of storagectl audit"),
        ('{"findings": [], "summary": {"status": 7}}', "summary.status 7 is not 0-3"),
        ('{"findings": [], "summary": {"status": true}}', "summary.status true is not 0-3"),
        ('{"findings": [1], "summary": {"status": 0}}', "findings[0] is not an object"),
        (
            '{"findings": [{"severity": "fatal", "code": "x"}], "summary": {"status": 0}}',
            "findings[0].severity is not one of",
        ),
        (
            '{"findings": [{"severity": "info", "code": "<b>"}], "summary": {"status": 0}}',
            "findings[0].code is not a finding code",
        ),
        (
            '{"findings": [{"severity": "info", "code": "x", "message": 5}], '
            '"summary": {"status": 0}}',
            "findings[0].message is not a string",
        ),
        ('{"findings": [], "summary": {"status": 0, "instances": -1}}', "'instances' is not"),
        ('{"findings": [], "summary": {"status": 0, "retained_sources": []}}', "not an object"),
        ('{"host": "a b/../c", "failed": true}', "host 'a b/../c' is not a host name"),
        ("[" * 100_000 + "]" * 100_000, "not JSON"),
    ],
)
def test_a_bad_file_is_its_hosts_problem_naming_the_file(
    tmp_path: Path, content: str | bytes, reason: str
) -> None:
    path = tmp_path / "cn-9.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    got = read_audit(str(path))
    assert (got.host, got.status, got.findings) == ("cn-9", 3, ())
    assert got.problem is not None and got.problem.startswith(f"{path}: ")
    assert reason in got.problem
    code, out, err = run(str(path))
    assert code == 3 and err == ""
    assert "cn-9" in out and reason in out


def test_huge_fifo_directory_and_dangling_files_are_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "MAX_BYTES", 1000)
    write(tmp_path, "huge.json", json.dumps(audit_json()) + " " * 2000)
    os.mkfifo(tmp_path / "fifo.json")  # no writer: an open without O_NONBLOCK hangs
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "gone.json").symlink_to(tmp_path / "nowhere")
    problems = {h.host: h.problem for h in fleet_report([str(tmp_path)]).hosts}
    size = (tmp_path / "huge.json").stat().st_size
    assert problems == {
        "dir": f"{tmp_path / 'dir.json'}: not a regular file",
        "fifo": f"{tmp_path / 'fifo.json'}: not a regular file",
        "gone": f"{tmp_path / 'gone.json'}: cannot read: No such file or directory",
        "huge": f"{tmp_path / 'huge.json'}: {size} bytes, over 1000",
    }


def test_failure_wrapper_and_an_incomplete_audit_are_unknown_with_their_reason(
    tmp_path: Path,
) -> None:
    msg = "ssh: connect to host cn-3 port 22: No route to host\n\x1b[31m"
    write(tmp_path, "x.json", {"host": "cn-3", "failed": True, "status": 3, "msg": msg})
    write(tmp_path, "cn-4.json", audit_json(status=3, errors=["cannot scan qemu:///system: x"]))
    hosts = {h.host: h for h in fleet_report([str(tmp_path)]).hosts}
    assert hosts["cn-3"].status == 3
    # one printable line: no terminal escapes from the file reach the operator
    assert hosts["cn-3"].problem == (
        "could not audit: ssh: connect to host cn-3 port 22: No route to host [31m"
    )
    assert hosts["cn-4"].problem == "audit incomplete: cannot scan qemu:///system: x"


def test_a_file_saying_ok_over_critical_findings_is_not_believed(tmp_path: Path) -> None:
    write(tmp_path, "liar.json", audit_json(finding("critical", "disk-missing"), status=0))
    (host,) = fleet_report([str(tmp_path)]).hosts
    assert host.status == 2


def test_one_host_in_two_files_is_unknown_naming_both(tmp_path: Path) -> None:
    a = write(tmp_path, "cn-5.json", audit_json())
    b = write(tmp_path, "later.json", {"host": "cn-5", "failed": True, "msg": "down"})
    (host,) = fleet_report([str(tmp_path)]).hosts
    assert host.status == 3
    assert host.problem == f"{a} also reported by {b}: which one is current cannot be told"


def test_inputs_files_and_directories_hidden_left_out_each_once(tmp_path: Path) -> None:
    d = tmp_path / "reports"
    d.mkdir()
    b = write(d, "b.json", audit_json())
    a = write(d, "a.json", audit_json())
    write(d, ".partial.json", "{")
    write(d, "notes.txt", "x")
    assert input_files([str(d), str(a)]) == [str(a), str(b)]
    with pytest.raises(FleetUsageError, match="no such file or directory"):
        input_files([str(tmp_path / "missing")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FleetUsageError, match=f"{empty}: no \\*.json file"):
        input_files([str(empty)])


def test_exit_status_is_the_worst_hosts_and_usage_errors_are_3(tmp_path: Path) -> None:
    ok = write(tmp_path, "ok.json", audit_json())
    warn = write(tmp_path, "warn.json", audit_json(finding("warning", "metadata-missing")))
    assert run(str(ok))[0] == 0
    assert run(str(ok), str(warn))[0] == 1
    code, _, err = run(str(tmp_path / "missing.json"))
    assert code == 3 and err.strip() == (
        f"--> FleetUsageError: {tmp_path / 'missing.json'}: no such file or directory"
    )
    assert run()[0] == 3  # no PATH
    assert run(str(ok), "-o", "xml")[0] == 3
    assert CliRunner().invoke(cli, ["fleet", "nosuch"]).exit_code == 3
    res = CliRunner().invoke(cli, ["fleet", "report", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.stdout.split())
    assert "Exit status (Nagios): the worst host's" in text and "3 also for a usage error" in text


def test_table_summary_line(tmp_path: Path) -> None:
    write(tmp_path, "a.json", audit_json(finding("critical", "disk-missing")))
    write(tmp_path, "b.json", {"host": "b", "failed": True, "msg": "unreachable"})
    code, out, _ = run(str(tmp_path))
    assert code == 3
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["STATUS", "HOST"]
    assert lines[1].split()[:2] == ["unknown", "b"] and lines[2].split()[:3] == [
        "critical",
        "a",
        "1",
    ]
    assert ["disk-missing", "1", "a:1"] in [line.split() for line in lines]
    assert lines[-1] == (
        "fleet: 2 hosts (0 ok, 0 warning, 1 critical, 1 unknown), 1 critical, 0 warning, "
        "0 info; 1 of 3 instances without a record; retained sources 0, interrupted "
        "migrations 0 (0) -> status 3"
    )


def test_retained_bytes_are_the_files_own_and_hostile_items_are_not_sized(
    tmp_path: Path,
) -> None:
    inst = tmp_path / U1
    inst.mkdir()
    kept = inst / "disk.retained-qcow2"
    kept.write_bytes(b"x" * 65536)
    outside = tmp_path / "secret"
    outside.write_bytes(b"y" * 65536)
    items = (
        {"disk": "disk", "backend": "qcow2", "format": "qcow2", "path": str(kept)},
        {"disk": "disk", "backend": "qcow2", "format": "qcow2", "path": str(outside)},
        {"disk": "disk", "backend": "lvm", "format": "raw", "volume_group": "nova",
         "volume": f"{U1}_disk"},
    )  # fmt: skip
    held = retained_held({U1: items, U2: ()}, str(tmp_path))
    assert held == {U1: {"sources": 3, "bytes": kept.stat().st_blocks * 512, "unsized": 2}}
    assert held[U1]["bytes"] >= 65536
