"""The main flow on a realistic sandbox node: inspect -> persist --all -> audit."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from storagectl.cli import cli
from storagectl.sandbox import SandboxSpec, create_sandbox

BACKEND = {("file", "qcow2"): "qcow2", ("file", "raw"): "flat", ("lvm", "raw"): "lvm",
           ("rbd", "raw"): "rbd"}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return create_sandbox(SandboxSpec(root=tmp_path_factory.mktemp("flow") / "node",
                                      instances=8, seed=3))


def run(sandbox, *args):
    res = CliRunner().invoke(cli, ["-c", sandbox.uri, "--nova-conf", str(sandbox.nova_conf),
                                   "--lock-path", str(sandbox.root / "locks"),
                                   "--log-file", str(sandbox.root / "log"), *args])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def test_inspect_matches_the_manifest_exactly(sandbox):
    code, out, err = run(sandbox, "inspect", "-o", "json")
    assert code == 0, err
    data = json.loads(out)
    got = {i["uuid"]: i for i in data["instances"]}
    assert set(got) == {i.uuid for i in sandbox.instances}
    for inst in sandbox.instances:
        layout = got[inst.uuid]
        assert layout["findings"] == [], layout["findings"]
        assert layout["state"] == inst.state and layout["source"] == "inferred"
        disks = {d["name"]: d for d in layout["disks"]}
        assert set(disks) == {d.name for d in inst.disks}
        for want in inst.disks:
            have = disks[want.name]
            assert have["backend"] == BACKEND[(want.backend, want.format)]
            assert (have["format"], have["target"]) == (want.format, want.target)
            assert have["virtual_size"] == want.virtual_size
            assert have["path"] == want.path
            assert (have["backing"] or {}).get("path") == want.backing_file


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
