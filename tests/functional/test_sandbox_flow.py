"""The main flow on a realistic sandbox node: inspect -> persist --all -> audit."""

from __future__ import annotations

import json

import pytest

from storagectl.sandbox import SandboxSpec, create_sandbox
from tests.flowcheck import assert_inspect_matches_manifest, run, run_json


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return create_sandbox(
        SandboxSpec(root=tmp_path_factory.mktemp("flow") / "node", instances=8, seed=3)
    )


def test_inspect_matches_the_manifest_exactly(sandbox):
    code, data = run_json(sandbox, "inspect")
    assert code == 0
    assert_inspect_matches_manifest(sandbox, data, source="inferred")
    assert all(i["findings"] == [] for i in data["instances"])


def test_persist_all_then_audit_is_clean(sandbox):
    code, out, err = run(sandbox, "persist", "--all", "-o", "json")
    assert code == 0, err
    statuses = {i["status"] for i in json.loads(out)["instances"]}
    assert statuses == {"written"}
    code, out, _ = run(sandbox, "inspect", "-o", "json")
    assert {i["source"] for i in json.loads(out)["instances"]} == {"metadata"}
    code, out, _ = run(sandbox, "audit", "-o", "json")
    data = json.loads(out)
    # Cache entries no disk backs (the sandbox keeps one on purpose; bases of flat
    # instances are no disk's backing file either) are info only.
    backing = {d.backing_file for i in sandbox.instances for d in i.disks if d.backing_file}
    cache = sandbox.instances_path / "_base"
    unused = {p.name for p in cache.iterdir() if str(p) not in backing}
    assert code == 0, data["findings"]
    assert {f["code"] for f in data["findings"]} == {"base-image-unused"}
    assert {f["disk"] for f in data["findings"]} == unused and unused
