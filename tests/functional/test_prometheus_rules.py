"""contrib/prometheus: the alert rules pass promtool's checks and their unit tests, and
they fire as they should on the real textfile of ``storagectl audit --prometheus``.

promtool is Debian's ``prometheus`` package (scripts/setup.sh installs it): without it
these tests fail, never skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from storagectl.cli import cli
from storagectl.sandbox import Sandbox, SandboxSpec, create_sandbox

REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib" / "prometheus"
RULES = CONTRIB / "storagectl.rules.yml"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")


def promtool(
    *args: str, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool not found: install Debian's prometheus package (scripts/setup.sh)"
    return subprocess.run(
        [tool, *args], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=120
    )


def alert_names() -> list[str]:
    return [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_rules_pass_promtool_check() -> None:
    res = promtool("check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in res.stdout


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    tests = sorted((CONTRIB / "tests").glob("*.yml"))
    assert tests
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in tests:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == set(alert_names()) == quiet
    for path in tests:
        res = promtool("test", "rules", path.name, cwd=path.parent)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "SUCCESS" in res.stdout


def audit_textfile(box: Sandbox, prom: Path, *, uri: str | None = None) -> int:
    res = CliRunner().invoke(
        cli,
        [
            "-c", uri or box.uri, "--nova-conf", str(box.nova_conf),
            "--lock-path", str(box.root / "locks"), "--log-file", str(box.root / "log"),
            "audit", "--quiet", "--prometheus", str(prom),
        ],
    )  # fmt: skip
    assert prom.exists(), res.output
    return res.exit_code


@pytest.fixture(scope="module")
def textfiles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """cn-a: a legacy node (Nova would misread its flat disks) with an interrupted
    migration; cn-c: a node whose hypervisor cannot be reached, never audited before."""
    root = tmp_path_factory.mktemp("prom")
    a = create_sandbox(SandboxSpec(root=root / "a", instances=4, seed=21))
    running = next(i.uuid for i in a.instances if i.state == "running")
    (a.instances_path / running / "disk.migrating").write_bytes(b"\x03" * 65536)
    c = create_sandbox(SandboxSpec(root=root / "c", instances=1, seed=22))
    assert audit_textfile(a, root / "a.prom") == 2
    assert audit_textfile(c, root / "c.prom", uri=f"test://{root}/c/gone.xml") == 3
    return {"cn-a": (root / "a.prom").read_text(), "cn-c": (root / "c.prom").read_text()}


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, line
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"] or ""))
            out.append((match["name"], labels, float(match["value"])))
    return out


def test_real_textfiles_pass_promtool_check_metrics(textfiles: dict[str, str]) -> None:
    for host, text in textfiles.items():
        res = promtool("check", "metrics", stdin=text)
        assert (res.returncode, res.stdout, res.stderr) == (0, "", ""), host


def test_every_metric_the_rules_use_is_in_the_real_textfile(textfiles: dict[str, str]) -> None:
    used = set(re.findall(r"\bstoragectl_[a-z_]+\b", RULES.read_text()))
    exported = {name for name, _, _ in samples(textfiles["cn-a"])}
    assert used and used <= exported, used - exported


def test_alerts_on_the_real_textfiles(textfiles: dict[str, str], tmp_path: Path) -> None:
    """promtool replays both hosts' real samples for 2h; the alerts that fire are the ones
    the samples call for. (Annotations are left out here: contrib's tests check them.)"""
    series = []
    for host, text in textfiles.items():
        target = {"instance": f"{host}:9100", "job": "node"}
        series.append({"series": _series("up", target), "values": "1x120"})
        for name, labels, value in samples(text):
            if name == "storagectl_audit_last_success_timestamp_seconds":
                value = 0  # promtool's clock starts at 0: the audit ran "just now"
            labels = {**labels, **target}
            series.append({"series": _series(name, labels), "values": f"{value:g}x120"})
    a = {name: (labels, v) for name, labels, v in samples(textfiles["cn-a"]) if not labels}
    assert a["storagectl_nova_would_misread_instances"][1] > 0
    assert a["storagectl_migrations_interrupted"][1] == 1
    criticals = [
        {"code": labels["code"], "instance": f"{host}:9100"}
        for host, text in textfiles.items()
        for name, labels, v in samples(text)
        if name == "storagectl_findings" and labels["severity"] == "critical" and v > 0
        and labels["code"] != "nova-would-misread"
    ]  # fmt: skip
    expected = {
        "StorageCtlNovaWouldMisread": [{"instance": "cn-a:9100"}],
        "StorageCtlMigrationInterrupted": [{"instance": "cn-a:9100"}],
        "StorageCtlAuditDown": [{"instance": "cn-c:9100"}],
        "StorageCtlAuditNeverSucceeded": [{"instance": "cn-c:9100"}],
        "StorageCtlCriticalFinding": criticals,
        "StorageCtlAuditStale": [],
        "StorageCtlAuditMetricsGone": [],
        "StorageCtlAuditMetricsAbsent": [],
    }
    assert set(expected) == set(alert_names())
    rules = yaml.safe_load(RULES.read_text())
    severity = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
            severity[rule["alert"]] = rule["labels"]["severity"]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    checks = [
        {
            "eval_time": "90m",
            "alertname": name,
            "exp_alerts": [
                {"exp_labels": {**alert, "job": "node", "severity": severity[name]}}
                for alert in alerts
            ],
        }
        for name, alerts in expected.items()
    ]
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    res = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def _series(name: str, labels: dict[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((CONTRIB / "grafana-storagectl.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_grafana_dashboard_queries_parse_and_use_exported_metrics(
    textfiles: dict[str, str], tmp_path: Path
) -> None:
    """Each panel's query is valid PromQL (promtool parses it as a recording rule, the
    $instance variable at its "All" value) and asks for metrics the audit exports."""
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"storagectl:panel{i}", "expr": e.replace("$instance", ".*")}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    (tmp_path / "panels.yml").write_text(yaml.safe_dump(rules))
    res = promtool("check", "rules", str(tmp_path / "panels.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    used = {m for e in exprs for m in re.findall(r"\bstoragectl_[a-z_]+\b", e)}
    exported = {name for text in textfiles.values() for name, _, _ in samples(text)}
    # unowned volumes are only written when there are some (storagectl/audit/prometheus.py)
    assert used - exported == {"storagectl_unowned_volumes"}
