"""Issue #12, items 8, 10, 11, 12 and 16 through the real CLI (``python -m storagectl`` in
a child process where the case needs a real pipe, a real socket or real privileges)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.functional.test_audit import audit, recorded_node
from tests.functional.test_operator_safety_audit import (
    REPO,
    WITHOUT_DAC,
    one_line,
    storagectl,
    tree_state,
)
from tests.functional.test_persist import legacy_instance

# -- item 8: instances_path ------------------------------------------------------------------


def test_relative_instances_path_is_one_config_error_not_unknown_layouts(mini_node):
    for _ in range(3):
        legacy_instance(mini_node)
    mini_node.conf.write_text("[DEFAULT]\ninstances_path = instances\n")
    code, out, err = audit(mini_node)
    assert code == 3, err
    line = one_line(err)
    assert "AuditFailed" in line and str(mini_node.conf) in line
    assert "instances_path = 'instances' is not an absolute path" in line
    assert "unknown-layout" not in out + err
    code, out, err = mini_node.run("inspect")
    assert code == 1 and "ConfigError" in one_line(err) and "unknown-layout" not in out


def test_missing_instances_path_names_option_and_value(mini_node):
    legacy_instance(mini_node)
    missing = mini_node.root / "instancez"
    mini_node.conf.write_text(f"[DEFAULT]\ninstances_path = {missing}\n")
    code, out, err = audit(mini_node)
    assert code == 3
    assert f"[DEFAULT] instances_path = {missing}: no such directory" in one_line(err)
    assert "unknown-layout" not in out


def test_unreadable_instances_path_is_permission_denied(mini_node, tmp_path):
    """Root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (setpriv): an instances_path of
    mode 0 is "Permission denied", not "does not exist" or a warning per disk."""
    legacy_instance(mini_node)
    mini_node.instances.chmod(0)
    try:
        res = storagectl(
            "--log-file",
            str(tmp_path / "log"),
            "--lock-path",
            str(tmp_path / "locks"),
            "audit",
            node=mini_node,
            prefix=WITHOUT_DAC,
        )
    finally:
        mini_node.instances.chmod(0o755)
    assert res.returncode == 3, res.stderr
    line = one_line(res.stderr)
    assert f"instances_path = {mini_node.instances}" in line and "Permission denied" in line
    assert "does not exist" not in line and "no such" not in line


# -- item 10: connecting ---------------------------------------------------------------------


def test_empty_connect_uri_is_refused(mini_node):
    legacy_instance(mini_node)
    res = storagectl("-c", "", "--nova-conf", str(mini_node.conf), "inspect", "-o", "json")
    assert res.returncode == 2 and res.stdout == ""
    assert "'-c' / '--connect': an empty URI" in res.stderr


def test_connect_to_a_host_that_never_answers_times_out(mini_node, tmp_path):
    """A TCP listener on 127.0.0.1 that never accepts nor answers: libvirt's RPC handshake
    would wait for as long as TCP does; --connect-timeout gives up, the other host is
    still scanned."""
    uuid = legacy_instance(mini_node)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    dead = f"qemu+tcp://127.0.0.1:{silent.getsockname()[1]}/system"
    try:
        start = time.monotonic()
        res = storagectl(
            "--connect-timeout",
            "1",
            "-c",
            dead,
            "-c",
            mini_node.uri,
            "--nova-conf",
            str(mini_node.conf),
            "--log-file",
            str(tmp_path / "log"),
            "inspect",
            "-o",
            "json",
            timeout=30,
        )
        elapsed = time.monotonic() - start
    finally:
        silent.close()
    assert elapsed < 8, elapsed
    assert res.returncode == 1
    assert one_line(res.stderr) == (
        f"--> HostUnreachable: {dead}: no answer within 1 s (--connect-timeout)"
    )
    data = json.loads(res.stdout)
    assert [h["error"] for h in data["hosts"]] == [
        "no answer within 1 s (--connect-timeout)",
        None,
    ]
    assert [i["uuid"] for i in data["instances"]] == [uuid]


def test_connect_timeout_must_be_positive(mini_node):
    code, _, err = mini_node.run("--connect-timeout", "0", "inspect")
    assert code == 2 and "--connect-timeout" in err


def test_same_uri_twice_is_scanned_once(mini_node):
    uuid = legacy_instance(mini_node)
    uri = mini_node.uri
    code, out, err = mini_node.run("-c", uri, "inspect", "-o", "json")
    assert code == 0, err
    data = json.loads(out)
    assert [h["uri"] for h in data["hosts"]] == [uri]
    assert [i["uuid"] for i in data["instances"]] == [uuid]


# -- item 11: usage and log-file errors -------------------------------------------------------


def test_bogus_disk_role_is_a_usage_error_listing_the_roles(mini_node):
    (uuid,) = recorded_node(mini_node, 1)
    before = tree_state(mini_node.instances)
    code, out, err = mini_node.run("migrate", uuid, "--to", "flat", "--disks", "bogus", "--yes")
    assert code == 2
    assert "'--disks': bogus: not a disk role; valid roles: root, ephemeral, swap, config" in err
    assert "UnexpectedError" not in err and "ValueError" not in err
    assert tree_state(mini_node.instances) == before


def test_full_log_file_is_told_once_without_tracebacks(mini_node):
    """/dev/full as --log-file: every write fails with ENOSPC."""
    assert Path("/dev/full").is_char_device()
    uuid = legacy_instance(mini_node)
    res = storagectl(
        "-c",
        mini_node.uri,
        "--nova-conf",
        str(mini_node.conf),
        "--log-file",
        "/dev/full",
        "-v",
        "inspect",
        "-o",
        "json",
    )
    assert res.returncode == 0
    assert [i["uuid"] for i in json.loads(res.stdout)["instances"]] == [uuid]
    told = [x for x in res.stderr.splitlines() if "LogFileError" in x]
    assert told == [
        "--> LogFileError: cannot write log file /dev/full: No space left on device; "
        "logging to it stopped"
    ]
    assert "Traceback" not in res.stderr and "Logging error" not in res.stderr


# -- item 12: a reader that goes away --------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("inspect",),
        ("inspect", "-o", "json"),
        ("inspect", "-o", "yaml"),
        ("--lock-path", "{root}/locks", "audit"),
        ("--lock-path", "{root}/locks", "audit", "-o", "json"),
        ("--help",),
        ("audit", "--help"),
        ("sandbox", "create", "{root}/sbx", "-n", "1"),
        ("--lock-path", "{root}/locks", "persist", "--all", "--dry-run"),
        ("--lock-path", "{root}/locks", "persist", "--all", "--dry-run", "-o", "yaml"),
    ],
)
def test_closed_stdout_ends_quietly_with_141(mini_node, args):
    """stdout a pipe whose reader is gone (``| head -1`` after its line): no
    BrokenPipeError, nothing on stderr, status 141 (128 + SIGPIPE)."""
    legacy_instance(mini_node)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "storagectl",
                "-c",
                mini_node.uri,
                "--nova-conf",
                str(mini_node.conf),
                "--log-file",
                str(mini_node.root / "log"),
                *(a.format(root=mini_node.root) for a in args),
            ],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            cwd=REPO,
        )
    finally:
        os.close(write_end)
    assert (res.returncode, res.stderr) == (141, "")


# -- item 16: -o table|json|yaml everywhere, findings with their host ------------------------


def test_sandbox_speaks_json_and_yaml_and_plain_text_when_piped(mini_node, tmp_path):
    code, out, err = mini_node.run(
        "sandbox", "create", str(tmp_path / "a"), "-n", "2", "-o", "json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["root"] == str(tmp_path / "a")
    assert sum(k["instances"] for k in data["kinds"]) == 2
    assert data["command"].startswith(f"storagectl -c test://{tmp_path / 'a'}/node.xml")
    code, out, err = mini_node.run(
        "sandbox", "create", str(tmp_path / "b"), "-n", "2", "-o", "yaml"
    )
    assert code == 0 and yaml.safe_load(out)["kinds"] == data["kinds"]
    code, out, err = mini_node.run("sandbox", "create", str(tmp_path / "c"), "-n", "2")
    assert code == 0
    assert not set(out) & set("─│┃━┏┓┗┛┌┐└┘╭╮╰╯")  # no box drawing into a pipe
    assert out.splitlines()[1].split() == ["KIND", "INSTANCES", "RUNNING", "SHUT", "OFF", "DISKS"]


def test_every_finding_in_json_names_its_host(mini_node):
    for _ in range(2):
        legacy_instance(mini_node)
    gone = mini_node.new_uuid()  # an instance whose disk is missing: an inspect finding
    mini_node.add(gone, [{"fmt": "raw", "src": mini_node.dir(gone) / "disk"}])
    (mini_node.base / "unused").write_bytes(b"\0" * 512)  # a finding of no instance
    code, out, err = audit(mini_node, "-o", "json")
    assert code == 2, err
    findings = json.loads(out)["findings"]
    assert {f["code"] for f in findings} >= {
        "metadata-missing",
        "disk-missing",
        "base-image-unused",
    }
    host = socket.gethostname()
    assert all(f["host"] for f in findings)
    assert {f["host"] for f in findings if f["instance"] is None} == {host}
    code, out, err = audit(mini_node, "-o", "yaml")
    assert code == 2 and yaml.safe_load(out)["findings"] == findings
    code, out, err = audit(mini_node, "-o", "text")  # the old spelling still works
    assert code == 2 and out.startswith("SEVERITY")
    code, out, err = mini_node.run("inspect", "-o", "json")
    data = json.loads(out)
    inst_findings = [f for i in data["instances"] for f in i["findings"]]
    assert inst_findings and all(
        f["host"] == i["host"] for i in data["instances"] for f in i["findings"]
    )
