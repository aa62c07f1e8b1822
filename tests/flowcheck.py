"""Shared assertions for the main-flow tests of every tier (inspect -> persist -> audit)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from storagectl.cli import cli
from storagectl.sandbox import Sandbox

BACKEND = {
    ("file", "qcow2"): "qcow2",
    ("file", "raw"): "flat",
    ("lvm", "raw"): "lvm",
    ("rbd", "raw"): "rbd",
}


def run(sandbox: Sandbox, *args: str, input: str | None = None) -> tuple[int, str, str]:
    """The CLI against ``sandbox``; ``input``: what a person types at its prompts."""
    res = CliRunner().invoke(
        cli,
        [
            "-c",
            sandbox.uri,
            "--nova-conf",
            str(sandbox.nova_conf),
            "--lock-path",
            str(sandbox.root / "locks"),
            "--log-file",
            str(sandbox.root / "log"),
            *args,
        ],
        input=input,
    )
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def run_json(sandbox: Sandbox, *args: str) -> tuple[int, dict]:
    code, out, err = run(sandbox, *args, "-o", "json")
    assert out, err
    return code, json.loads(out)


def assert_inspect_matches_manifest(sandbox: Sandbox, data: dict, *, source: str) -> None:
    got = {i["uuid"]: i for i in data["instances"]}
    assert set(got) == {i.uuid for i in sandbox.instances}
    for inst in sandbox.instances:
        layout = got[inst.uuid]
        assert layout["source"] == source
        # Nothing but what the manifest predicts: Nova would misread the disks of the
        # layouts the host's nova.conf no longer describes
        misread = sorted(d.name for d in inst.disks if d.nova_misread)
        serious = [f for f in layout["findings"] if f["severity"] != "info"]
        assert [f["code"] for f in serious] == ["nova-would-misread"] * len(misread), serious
        assert sorted(f["disk"] for f in serious) == misread
        disks = {d["name"]: d for d in layout["disks"]}
        assert set(disks) == {d.name for d in inst.disks}
        for want in inst.disks:
            have = disks[want.name]
            assert have["nova"]["matches"] is not want.nova_misread, have
            assert have["backend"] == BACKEND[(want.backend, want.format)], have
            assert (have["format"], have["target"]) == (want.format, want.target)
            assert have["virtual_size"] == want.virtual_size, have
            assert (have["volume_group"], have["volume"]) == (want.vg, want.lv)
            assert (have["pool"], have["image"]) == (want.pool, want.image)
            if want.backend == "file":
                assert have["path"] == want.path
            assert (have["backing"] or {}).get("path") == want.backing_file


def assert_only_predicted_misreads(sandbox: Sandbox, findings: list[dict]) -> None:
    """The warnings and criticals of an audit of an unchanged sandbox: exactly the disks
    its manifest says Nova would misread (its older layouts), each nova-would-misread."""
    misread = {(i.uuid, d.name) for i in sandbox.instances for d in i.disks if d.nova_misread}
    serious = [f for f in findings if f["severity"] != "info"]
    assert {f["code"] for f in serious} <= {"nova-would-misread"}, serious
    assert sorted((f["instance"], f["disk"]) for f in serious) == sorted(misread)
