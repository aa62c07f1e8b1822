"""Every command that prints data takes -o: show (yaml|json|table), migrate --status
(table|json|yaml); an -o that a migrate mode does not print is refused, not ignored."""

import json
import os

import pytest
import yaml

from tests.functional.test_persist import legacy_instance, persist_json


def test_show_prints_a_table_of_the_record(mini_node):
    u = legacy_instance(mini_node)
    code, _, err = persist_json(mini_node, u)
    assert code == 0, err
    code, out, err = mini_node.run("show", u, "-o", "table")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"instance {u} (instance-00000001) on ")
    assert lines[1].split() == [
        "DISK",
        "ROLE",
        "TARGET",
        "BACKEND",
        "FORMAT",
        "LOCATION",
        "VSIZE",
        "BACKING",
    ]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    root = rows["disk"]
    assert root[1:6] == ["root", "vda", "qcow2", "qcow2", str(mini_node.instances / u / "disk")]
    assert root[7].startswith(str(mini_node.instances / "_base"))
    # the same record as the yaml output
    code, out_yaml, _ = mini_node.run("show", u)
    data = yaml.safe_load(out_yaml)
    assert set(rows) == {d["name"] for d in data["disks"]}


def test_migrate_status_speaks_json_and_yaml(mini_node):
    code, out, err = mini_node.run("migrate", "--status", "-o", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["migrations"] == [] and data["host"].startswith("test:///")
    code, out, err = mini_node.run("migrate", "--status", "-o", "yaml")
    assert code == 0, err
    assert yaml.safe_load(out)["migrations"] == []


def test_output_with_a_mode_that_prints_no_data_is_refused(mini_node):
    u = legacy_instance(mini_node)
    code, _, err = mini_node.run("migrate", u, "--rollback", "-o", "json")
    assert code == 2
    assert "--output does not apply to --rollback (it is an option of --to and --status)" in err


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("directory", "not a regular file"),
        ("list", "expected a JSON object, got list"),
        ("binary", "not UTF-8"),
        ("garbage", "not JSON: "),
        ("wrong-shape", "not a storagectl journal"),
        ("fifo", "not a regular file"),
        ("symlink", "a symlink"),
    ],
)
def test_a_bad_journal_is_one_row_of_migrate_status(mini_node, kind, reason):
    """One unreadable journal neither stops the listing nor shows Python internals."""
    u = legacy_instance(mini_node)
    journal = mini_node.instances / u / "storage.migration.json"
    if kind == "directory":
        journal.mkdir()
    elif kind == "fifo":
        os.mkfifo(journal)
    elif kind == "symlink":
        journal.symlink_to("/etc/hostname")
    else:
        journal.write_bytes(
            {
                "list": b"[1, 2]",
                "binary": b"\xff\xfe\x00\x01",
                "garbage": b"{not json",
                "wrong-shape": b'{"plan": 7, "original_xml": [], "original_record": {}}',
            }[kind]
        )
    code, out, err = mini_node.run("migrate", "--status", "-o", "json")
    assert code == 1, err
    rows = json.loads(out)["migrations"]
    assert [r["uuid"] for r in rows] == [u] and rows[0]["state"] == "unreadable"
    assert str(journal) in rows[0]["error"] and reason in rows[0]["error"]
    for text in (out, err):
        assert "Traceback" not in text and "Error:" not in text and "codec" not in text
    code, out, err = mini_node.run("migrate", "--status")
    assert code == 1 and u in out and reason in err
