"""Operator safety of ``migrate --rollback/--resume/--status`` with a real journal, on
domains of the real libvirtd (#12 items 1, 2, 7, 14).

A migration is SIGKILLed after its switch (the test-only fault hook): the domain points
at the new disk, the source is kept, the journal is left. From there a dry run of either
way changes nothing, a missing --yes or two modes at once are refused, --status and
audit call it interrupted (pid gone, lock free) with the bytes it holds and the
commands, and only then does the real rollback restore everything. Ctrl-C during a copy
prints the exact --resume/--rollback commands.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from storagectl.cli import cli
from tests.env.libvirtd import Libvirtd
from tests.migrate_support import (
    Node,
    guest_sha,
    leftovers,
    make_instance,
    new_node,
    snapshot,
)


def _hold(lock_path: str, uuid: str, ready, release) -> None:  # noqa: ANN001
    from storagectl.host.locks import instance_lock

    with instance_lock(lock_path, uuid):
        ready.set()
        release.wait(30)


@pytest.fixture
def node(libvirtd: Libvirtd, libvirt_workdir: Path) -> Node:
    return new_node(libvirtd, libvirt_workdir)


def test_dry_runs_refusals_status_and_audit_of_an_interrupted_migration(
    node: Node, tmp_path: Path
) -> None:
    uuid = make_instance(node, root="qcow2", data_mib=2)
    d = node.instances / uuid
    before = snapshot(node, uuid)
    before_sha = guest_sha(d / "disk", "qcow2", tmp_path)
    res = node.killed(
        "migrate", uuid, "--to", "flat", "--disks", "root", "--yes", fault="switch:after"
    )
    assert res.returncode == -signal.SIGKILL, res.stderr
    killed = snapshot(node, uuid)
    journal = (d / "storage.migration.json").read_bytes()
    assert killed != before and "disk.retained-qcow2" in killed["files"]

    def unchanged() -> None:
        assert snapshot(node, uuid) == killed
        assert (d / "storage.migration.json").read_bytes() == journal

    # item 1: dry runs print what would happen and change nothing
    res = node.run("migrate", "--rollback", uuid, "--dry-run")
    assert res.returncode == 0, res.stderr
    who = f"storagectl-mig-{uuid[:8]} ({uuid})"
    assert f"would roll back the migration of {who} to flat" in res.stdout
    assert "stopped at switch (after)" in res.stdout
    assert "restore the domain XML, storage.yaml and disk.info" in res.stdout
    assert f"disk: back to {d / 'disk'} (from {d / 'disk.retained-qcow2'})" in res.stdout
    assert "dry run: nothing was changed" in res.stderr
    unchanged()
    res = node.run("migrate", "--resume", uuid, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "would resume the migration" in res.stdout and "steps to run: cleanup" in res.stdout
    unchanged()
    # no terminal, no --yes: refused, for either way
    for mode in ("--rollback", "--resume"):
        res = node.run("migrate", mode, uuid)
        assert res.returncode == 2 and "confirm with --yes" in res.stderr, res.stderr
        unchanged()
    # item 2: a typo never turns a resume into an undo
    res = node.run("migrate", "--resume", "--rollback", uuid, "--yes")
    assert res.returncode == 2, res.stderr
    assert "--resume and --rollback cannot be combined" in res.stderr
    res = node.run("migrate", uuid, "--resume", "--to", "lvm", "--yes")
    assert res.returncode == 2 and "--to and --resume cannot be combined" in res.stderr
    res = node.run("migrate", "--rollback", uuid, "--volume-group", "vg0", "--yes")
    assert res.returncode == 2 and "--volume-group does not apply to --rollback" in res.stderr
    unchanged()

    # item 7: --status tells it is dead, audit reports it with bytes and commands
    dead_pid = json.loads(journal)["pid"]
    res = node.run("migrate", "--status")
    assert res.returncode == 0, res.stderr
    assert uuid in res.stdout and "interrupted" in res.stdout
    assert f"pid {dead_pid} is gone" in res.stdout.replace("\n", " ")
    assert f"migrate --resume {uuid}" in res.stderr and f"migrate --rollback {uuid}" in res.stderr
    # the same journal while another process holds the instance lock: running, not dead
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(node.root / "locks"), uuid, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        res = node.run("migrate", "--status", uuid)
        assert res.returncode == 0, res.stderr
        flat = res.stdout.replace("\n", " ")
        assert f"running: pid {holder.pid} holds the instance lock" in flat
        assert "interrupted" not in flat and "--resume" not in res.stderr
    finally:
        release.set()
        holder.join(10)
    prom = tmp_path / "storagectl.prom"
    res = node.run("audit", "-o", "json", "--prometheus", str(prom))
    ours = [f for f in json.loads(res.stdout)["findings"] if f["instance"] == uuid]
    assert [(f["severity"], f["code"]) for f in ours] == [("warning", "migration-interrupted")]
    held = (d / "disk.retained-qcow2").stat().st_blocks * 512
    message = ours[0]["message"]
    assert f"holding {held} bytes" in message and held > 0
    assert f"storagectl migrate --resume {uuid}" in message
    assert f"storagectl migrate --rollback {uuid}" in message
    text = prom.read_text()
    assert "storagectl_migrations_interrupted 1\n" in text
    assert f'storagectl_migration_interrupted_bytes{{instance="{uuid}"}} {held}\n' in text
    assert 'code="migration-interrupted"} 1\n' in text
    unchanged()

    # and the real rollback (confirmed) restores everything
    res = node.run("migrate", "--rollback", uuid, "--yes")
    assert res.returncode == 0, res.stderr
    assert snapshot(node, uuid) == before and leftovers(node, uuid) == []
    assert guest_sha(d / "disk", "qcow2", tmp_path) == before_sha
    res = node.run("audit", "-o", "json", "--prometheus", str(prom))
    assert not [f for f in json.loads(res.stdout)["findings"] if f["instance"] == uuid]
    assert "storagectl_migrations_interrupted 0\n" in prom.read_text()


def test_ctrl_c_during_the_copy_prints_the_exact_commands(node: Node, tmp_path: Path) -> None:
    uuid = make_instance(node, root="flat", data_mib=24)
    d = node.instances / uuid
    before_sha = guest_sha(d / "disk", "raw", tmp_path)
    proc = node.spawn(
        "migrate", uuid, "--to", "qcow2", "--disks", "root", "--yes", "--bwlimit", "2"
    )
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the copy never started"
        try:
            if json.loads((d / "storage.migration.json").read_text())["step"] == "copy":
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    base = (
        f"storagectl -c {node.libvirtd.uri} --nova-conf {node.conf} "
        f"--lock-path {node.root / 'locks'} migrate"
    )
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"--> Interrupted: migration of storagectl-mig-{uuid[:8]} ({uuid})"), err
    assert "stopped at copy (before)" in last
    assert f"finish it with: {base} --resume {uuid}" in last
    assert f"or undo it with: {base} --rollback {uuid}" in last
    assert "Traceback" not in err
    # the printed command works (with --yes, as stdin is no terminal here)
    res = node.cli(
        *last.split("finish it with: storagectl ")[1].split("  or undo")[0].split(), "--yes"
    )
    assert res.returncode == 0, res.stderr
    assert not (d / "storage.migration.json").exists()
    assert guest_sha(d / "disk", "qcow2", tmp_path) == before_sha


@pytest.mark.parametrize(
    ("args", "question"),
    [(("--to", "flat", "--disks", "root"), "Migrate?"), (("--rollback",), "Roll back?")],
)
def test_declining_at_a_terminal_says_so_and_changes_nothing(
    node: Node, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], question: str
) -> None:
    import storagectl.cli.migrate as migrate_cli

    uuid = make_instance(node, root="qcow2", data_mib=1)
    if "--rollback" in args:
        res = node.killed("migrate", uuid, "--to", "flat", "--yes", fault="copy:after")
        assert res.returncode == -signal.SIGKILL, res.stderr
    before = snapshot(node, uuid)
    journal = node.instances / uuid / "storage.migration.json"
    had_journal = journal.exists()
    monkeypatch.setattr(migrate_cli, "stdin_is_terminal", lambda: True, raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    argv = [*node.args(), *node.converting(("migrate", uuid, *args))[0]]
    res = CliRunner().invoke(cli, argv, input="n\n")
    assert res.exit_code == 1, res.output
    assert f"{question} [y/N]" in res.stderr
    assert res.stderr.strip().endswith("--> Declined: not confirmed, nothing was changed")
    assert snapshot(node, uuid) == before and journal.exists() == had_journal


def test_the_plan_as_data_with_dry_run(node: Node) -> None:
    """``migrate --to X --dry-run -o json|yaml``: the plan as data, nothing changed; without
    --dry-run an -o json is a usage error (the run itself prints progress, not data)."""
    import yaml

    uuid = make_instance(node, root="qcow2", data_mib=1)
    before = snapshot(node, uuid)
    res = node.run("migrate", uuid, "--to", "flat", "--dry-run", "-o", "json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["host"] == node.libvirtd.uri
    [plan] = data["plans"]
    assert plan["uuid"] == uuid and plan["options"]["to"] == "flat"
    assert [m["name"] for m in plan["moves"]] == ["disk"]
    res = node.run("migrate", uuid, "--to", "flat", "--dry-run", "-o", "yaml")
    assert res.returncode == 0 and yaml.safe_load(res.stdout)["plans"][0]["uuid"] == uuid
    res = node.run("migrate", uuid, "--to", "flat", "--yes", "-o", "json")
    assert res.returncode == 2 and "add --dry-run" in res.stderr
    assert snapshot(node, uuid) == before
