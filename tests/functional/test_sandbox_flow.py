"""The main flow on a realistic sandbox node: inspect -> persist --all -> audit."""

from __future__ import annotations

import json

import pytest

from storagectl.sandbox import SandboxSpec, create_sandbox
from tests.flowcheck import (
    assert_inspect_matches_manifest,
    assert_only_predicted_misreads,
    run,
    run_json,
)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return create_sandbox(
        SandboxSpec(root=tmp_path_factory.mktemp("flow") / "node", instances=8, seed=3)
    )


def test_inspect_matches_the_manifest_exactly(sandbox):
    code, data = run_json(sandbox, "inspect")
    assert code == 0
    assert_inspect_matches_manifest(sandbox, data, source="inferred")
    # the manifest's older layouts are really there to be misread (flat, and lvm/rbd
    # when the sandbox has them): the check above is no vacuous "nothing found"
    assert any(d.nova_misread for i in sandbox.instances for d in i.disks)


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
    # Recording a layout does not change how Nova reads it: the disks the manifest says
    # Nova would misread are still critical (moving them is migrate's job).
    assert code == 2, data["findings"]
    assert {f["code"] for f in data["findings"]} == {"base-image-unused", "nova-would-misread"}
    assert_only_predicted_misreads(sandbox, data["findings"])
    info = [f for f in data["findings"] if f["code"] == "base-image-unused"]
    assert {f["disk"] for f in info} == unused and unused
