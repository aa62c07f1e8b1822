"""Operator safety of ``persist`` and ``show`` on sandbox nodes (libvirt test driver).

``persist --dry-run`` reports what a real run would decide (unchanged / would-write /
refused with the diff, exit 1) and writes nothing; Ctrl-C during ``persist --all`` says
how many records were written; ``show`` tells an unknown instance from one with no
record, and refuses a name that two hosts use.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from storagectl.cli import cli
from storagectl.record import persist as persist_mod
from storagectl.record import record as rec
from storagectl.sandbox import SandboxSpec, create_sandbox
from tests.flowcheck import run


@pytest.fixture
def sandbox(tmp_path: Path):
    return create_sandbox(SandboxSpec(root=tmp_path / "node", instances=4, seed=11))


def records(box) -> dict[str, bytes | None]:  # noqa: ANN001
    out = {}
    for inst in box.instances:
        path = box.instances_path / inst.uuid / "storage.yaml"
        out[inst.uuid] = path.read_bytes() if path.exists() else None
    return out


def statuses(out: str) -> dict[str, str]:
    return {i["uuid"]: i["status"] for i in json.loads(out)["instances"]}


def test_persist_dry_run_reports_what_a_real_run_would_do(sandbox) -> None:  # noqa: ANN001
    # nothing recorded yet: every one would be written, none is
    code, out, err = run(sandbox, "persist", "--all", "--dry-run", "-o", "json")
    assert code == 0, err
    assert set(statuses(out).values()) == {"would-write"}
    assert set(records(sandbox).values()) == {None}
    code, _, err = run(sandbox, "persist", "--all")
    assert code == 0, err
    # all recorded and identical: unchanged, not would-write
    code, out, err = run(sandbox, "persist", "--all", "--dry-run", "-o", "json")
    assert code == 0, err
    assert set(statuses(out).values()) == {"unchanged"}
    # one record differs from what inference says now, one is gone
    first, second = (i.uuid for i in sandbox.instances[:2])
    d1 = sandbox.instances_path / first
    old = rec.read_record(d1, expect_uuid=first)
    disk = old.disks[0]
    bigger = dataclasses.replace(disk, virtual_size=disk.virtual_size + 512)
    rec.write_record(d1, dataclasses.replace(old, disks=(bigger, *old.disks[1:])))
    (sandbox.instances_path / second / "storage.yaml").unlink()
    before = records(sandbox)
    code, out, err = run(sandbox, "persist", "--all", "--dry-run", "-o", "json")
    assert code == 1, (out, err)
    got = statuses(out)
    assert got.pop(first) == "refused" and got.pop(second) == "would-write"
    assert set(got.values()) == {"unchanged"}
    item = next(i for i in json.loads(out)["instances"] if i["uuid"] == first)
    assert "a different record exists" in item["reason"] and item["diff"]
    assert str(disk.virtual_size) in item["diff"]
    assert records(sandbox) == before
    # the table says the same, with the diff
    code, out, err = run(sandbox, "persist", first, "--dry-run")
    assert code == 1, err
    assert "refused" in out and f"--- {first}: recorded vs inferred now" in out
    assert records(sandbox) == before


def test_ctrl_c_during_persist_all_says_how_many_were_written(sandbox, monkeypatch) -> None:  # noqa: ANN001
    real = persist_mod.persist_one
    calls = []

    def interrupted_on_the_third(*args, **kw):  # noqa: ANN002, ANN003
        calls.append(args[0].uuid)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(persist_mod, "persist_one", interrupted_on_the_third)
    code, out, err = run(sandbox, "persist", "--all")
    assert code == 130, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("--> PersistInterrupted: interrupted after 2 of 4 instances: ")
    assert "2 record(s) written" in lines[0] and calls[2] in lines[0]
    assert "run persist again" in lines[0]
    written = {u for u, data in records(sandbox).items() if data is not None}
    assert written == set(calls[:2])


def _node(root: Path, domains: list[tuple[str, str]]) -> str:
    root.mkdir(parents=True)
    xml = "".join(
        f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid><memory>65536</memory>"
        "<os><type>hvm</type></os><devices/></domain>"
        for name, uuid in domains
    )
    (root / "node.xml").write_text(f"<node>{xml}</node>")
    return f"test://{root / 'node.xml'}"


def show(tmp_path: Path, *args: str, uris: list[str]) -> tuple[int, str, str]:
    conf = tmp_path / "nova.conf"
    conf.write_text(f"[DEFAULT]\ninstances_path = {tmp_path / 'instances'}\n")
    (tmp_path / "instances").mkdir(exist_ok=True)
    argv = [a for uri in uris for a in ("-c", uri)]
    res = CliRunner().invoke(
        cli,
        [*argv, "--nova-conf", str(conf), "--log-file", str(tmp_path / "log"), "show", *args],
    )
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


A = "5eed0013-0000-4000-8000-00000000000a"
B = "5eed0013-0000-4000-8000-00000000000b"


def test_show_a_name_two_hosts_use_is_an_error_listing_both(tmp_path: Path) -> None:
    one = _node(tmp_path / "cn1", [("instance-00000001", A)])
    two = _node(tmp_path / "cn2", [("instance-00000001", B), ("instance-00000002", A)])
    code, out, err = show(tmp_path, "instance-00000001", uris=[one, two])
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("--> AmbiguousInstance: instance-00000001 names more than one")
    assert f"{A} on " in lines[0] and f"({one})" in lines[0]
    assert f"{B} on " in lines[0] and f"({two})" in lines[0]
    assert lines[0].endswith("give the uuid")


def test_show_an_unknown_instance_says_no_such_instance(tmp_path: Path) -> None:
    uri = _node(tmp_path / "cn1", [("instance-00000001", A)])
    code, out, err = show(tmp_path, B, uris=[uri])
    assert code == 1 and out == ""
    assert err.strip() == (
        f"--> NoSuchInstance: no such instance {B}: no instance directory "
        f"{tmp_path / 'instances' / B}"
    )
    code, out, err = show(tmp_path, "instance-00000009", uris=[uri])
    assert code == 1 and out == ""
    assert err.strip() == (
        f"--> NoSuchInstance: no such instance instance-00000009: no domain of that name on {uri}"
    )
    # a known instance without a record is told to run persist
    (tmp_path / "instances" / A).mkdir()
    code, out, err = show(tmp_path, "instance-00000001", uris=[uri])
    assert code == 1 and "RecordNotFound" in err and "storagectl persist" in err
