"""Whole-host conversion (``migrate --all``, issue #15 part 3) on a node of real files and
qemu-img with the fake libvirt: the host plan, the run, the report, a kill -9 in the
middle and ``--resume --all``, failures with and without ``--keep-going``."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from storagectl.host.libvirt_port import FakeLibvirt
from storagectl.migrate.switch import SwitchError
from tests.unit.test_migrate_matrix_fake_libvirt import (
    FakeNode,
    domain_disk,
    guest_sha,
    leftovers,
    make_instance,
)

FLAT = "[libvirt] images_type = flat"


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path / "node")


def journal(node: FakeNode) -> Path:
    return node.root / "storagectl-host-migration.json"  # state_path = the node's root


def shas(node: FakeNode, uuids: list[str], scratch: Path) -> dict[str, str]:
    return {u: guest_sha(*domain_disk(node, u), scratch) for u in uuids}


def test_the_host_plan_names_every_instance_the_space_and_the_nova_conf(
    node: FakeNode, tmp_path: Path
) -> None:
    uuids = sorted(make_instance(node, "qcow2") for _ in range(3))
    before = {u: json.dumps(node.record(u)) for u in uuids}
    res = node.run("migrate", "--all", "--to", "flat", "--parallel", "2", "--dry-run")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "to flat: 3 instance(s) to move" in out and "2 at a time" in out
    for u in uuids:
        assert f"instance-{u[:8]} ({u}): disk qcow2->flat" in out
    assert f"space: file system of {node.instances}" in out or "space: " in out
    assert "when every instance is moved, set in nova.conf:" in out and FLAT in out
    assert "dry run: nothing was changed" in res.stderr
    assert {u: json.dumps(node.record(u)) for u in uuids} == before
    assert not journal(node).exists()
    res = node.run("migrate", "--all", "--to", "flat", "--dry-run", "-o", "json")
    data = json.loads(res.stdout)
    assert [i["uuid"] for i in data["instances"]] == sorted(
        uuids, key=lambda u: f"instance-{u[:8]}"
    )
    assert {i["status"] for i in data["instances"]} == {"planned"}
    assert data["nova_conf"] == [FLAT] and data["still_misread_after"] == []
    assert all(i["plan"]["nova"]["misread"] == [] for i in data["instances"])


def test_a_host_converted_then_nova_conf_set_reads_clean(node: FakeNode, tmp_path: Path) -> None:
    uuids = [make_instance(node, "qcow2") for _ in range(3)] + [make_instance(node, "flat")]
    before = shas(node, uuids, tmp_path)
    res = node.run("migrate", "--all", "--to", "flat", "--parallel", "2", "--yes")
    assert res.returncode == 0, res.stderr
    node.rescan()
    assert shas(node, uuids, tmp_path) == before
    assert all(domain_disk(node, u)[1] == "raw" for u in uuids)
    assert "3 instance(s) moved" in res.stdout and "0 failed, 0 not moved" in res.stdout
    assert "retained sources: 3 holding" in res.stdout
    assert res.stdout.count("storagectl migrate --delete-retained") == 3
    assert "every instance is moved: set in nova.conf now" in res.stdout and FLAT in res.stdout
    assert not journal(node).exists()
    assert all(leftovers(node, u) == [] for u in uuids)
    # before the flip Nova (qcow2) would misread them all; after it, nothing
    res = node.run("audit", "-o", "json")
    misread = {f["instance"] for f in json.loads(res.stdout)["findings"]}
    assert set(uuids) <= misread
    node.conf.write_text(node.conf.read_text() + "[libvirt]\nimages_type = flat\n")
    res = node.run("audit", "-o", "json")
    assert res.returncode == 0, res.stdout
    codes = {f["code"] for f in json.loads(res.stdout)["findings"]}
    assert "nova-would-misread" not in codes


def test_running_instances_are_listed_never_touched(node: FakeNode) -> None:
    # a Flat host (raw files) converted to qcow2: a raw disk left behind is what Nova's
    # Qcow2 images misread
    node.conf.write_text(node.conf.read_text() + "use_cow_images = false\n")
    still, running = make_instance(node, "flat"), make_instance(node, "flat")
    node.domains = [
        d.replace("<test:runstate>5", "<test:runstate>1") if running in d else d
        for d in node.domains
    ]
    node.rescan()
    to_qcow2 = ("migrate", "--all", "--to", "qcow2")
    res = node.run(*to_qcow2, "--offline", "--dry-run")
    assert f"skipped: instance-{running[:8]} ({running}): it is running: --offline" in (res.stdout)
    res = node.run(*to_qcow2, "--state", "shutoff", "--dry-run")
    planned, after = res.stdout.split("after these moves")
    assert running not in planned
    assert (
        f"Nova would still misread 1 instance(s) with that nova.conf: instance-{running[:8]}"
        in ("after these moves" + after)
    )
    res = node.run(*to_qcow2, "--offline", "--yes")
    assert res.returncode == 0, res.stderr
    assert "1 instance(s) moved" in res.stdout
    # the running one is still raw: the report does not tell the operator to flip yet
    assert "set in nova.conf now" not in res.stdout
    assert f"Nova would still misread 1 instance(s) with it: instance-{running[:8]}" in (res.stdout)
    assert node.record(running)["disks"][0]["backend"] == "flat"
    assert [d["backend"] for d in node.record(still)["disks"]] == ["qcow2", "qcow2"]


@pytest.mark.parametrize(
    "fault", ["plan:after", "copy:before", "verify:after", "switch:after", "cleanup:before"]
)
def test_killed_in_the_middle_then_resume_all(node: FakeNode, tmp_path: Path, fault: str) -> None:
    uuids = [make_instance(node, "qcow2") for _ in range(3)]
    before = shas(node, uuids, tmp_path)
    res = node.killed("migrate", "--all", "--to", "flat", "--parallel", "2", "--yes", fault=fault)
    assert res.returncode == -signal.SIGKILL, res.stderr
    data = json.loads(journal(node).read_text())
    assert [i["status"] for i in data["instances"]] == ["planned"] * 3
    res = node.run("migrate", "--status")
    assert "host conversion to flat" in res.stdout and "interrupted" in res.stdout
    assert "storagectl migrate --resume --all" in res.stdout
    res = node.run("migrate", "--status", "-o", "json")
    conversion = json.loads(res.stdout)["host_conversion"]
    assert conversion["to"] == "flat" and len(conversion["instances"]) == 3
    # a new conversion is refused while one is in progress
    res = node.run("migrate", "--all", "--to", "flat", "--yes")
    assert res.returncode == 2 and "--resume --all" in res.stderr
    res = node.run("migrate", "--resume", "--all", "--dry-run")
    assert "finish its migration" in res.stdout and "move it" in res.stdout
    node.rescan()  # whatever the kill left, the guests see their data
    assert shas(node, uuids, tmp_path) == before
    res = node.run("migrate", "--resume", "--all", "--yes")
    assert res.returncode == 0, res.stderr
    assert "3 instance(s) moved" in res.stdout
    assert not journal(node).exists()
    node.rescan()
    assert shas(node, uuids, tmp_path) == before
    assert all(node.record(u)["disks"][0]["backend"] == "flat" for u in uuids)
    assert {u: leftovers(node, u) for u in uuids} == {u: [] for u in uuids}


@pytest.mark.parametrize("keep_going", [False, True])
def test_a_failure_stops_new_moves_unless_keep_going(node: FakeNode, keep_going: bool) -> None:
    uuids = sorted((make_instance(node, "qcow2") for _ in range(3)), key=lambda u: u[:8])
    fake = FakeLibvirt(uri=node.uri, path=node.state)
    fake.fail("define", SwitchError(instance="domain", reason="libvirt refused: nope"))
    args = ["migrate", "--all", "--to", "flat", "--yes"] + (["--keep-going"] if keep_going else [])
    from click.testing import CliRunner

    from storagectl.cli import cli
    from storagectl.cli.app import Application

    res = CliRunner().invoke(cli, node.args(*args), obj=Application(libvirt_factory=lambda u: fake))
    assert res.exit_code == 1, res.output
    assert "failed" in res.stdout and "libvirt refused: nope" in res.stdout
    if keep_going:
        assert "2 instance(s) moved" in res.stdout
    else:
        assert "0 instance(s) moved" in res.stdout and "not started" in res.stdout
    assert "nova.conf must not change yet" in res.stdout
    data = json.loads(journal(node).read_text())
    assert "failed" in [i["status"] for i in data["instances"]]
    # the host journal stays for --resume --all, which retries what is left
    res = node.run("migrate", "--resume", "--all", "--yes")
    assert res.returncode == 0, res.stderr
    assert all(node.record(u)["disks"][0]["backend"] == "flat" for u in uuids)
    assert not journal(node).exists()


def test_all_options_are_usage_errors_elsewhere(node: FakeNode) -> None:
    uuid = make_instance(node, "qcow2")
    for argv, why in (
        (("migrate", uuid, "--all", "--to", "flat"), "name none"),
        (("migrate", uuid, "--to", "flat", "--keep-going"), "go with --all"),
        (("migrate", "--all", "--to", "flat", "--from", "bogus", "--yes"), "not a backend"),
        (("migrate", "--resume", "--all", "--yes"), "no host conversion is in progress"),
        (("migrate", "--rollback", uuid, "--all"), "--all does not apply to --rollback"),
    ):
        res = node.run(*argv)
        assert res.returncode == 2, (argv, res.stderr)
        assert why in res.stderr, (argv, res.stderr)


def test_resume_counts_a_move_finished_after_the_host_journal_was_written(
    node: FakeNode,
) -> None:
    """kill -9 between an instance's last step and the host journal's rewrite: the host
    journal still says "planned"; --resume --all sees the record and counts it moved."""
    from storagectl.host.config import load_nova_config
    from storagectl.migrate import host
    from storagectl.migrate.plan import Options

    uuids = [make_instance(node, "qcow2") for _ in range(2)]
    res = node.run("migrate", "--all", "--to", "flat", "--yes")
    assert res.returncode == 0, res.stderr
    hp = host.HostPlan(node.uri, "flat", Options(to="flat"), 1, None, False, [FLAT])
    hp.items = [host.HostItem(u, f"instance-{u[:8]}", host.PLANNED) for u in uuids]
    host.write_host_journal(str(journal(node)), hp, "2026-12-04T00:00:00Z")
    nova = load_nova_config([node.conf])
    assert all(host.already_moved(nova, u, Options(to="flat")) for u in uuids)
    res = node.run("migrate", "--resume", "--all", "--dry-run")
    assert res.stdout.count("moved already") == 2
    res = node.run("migrate", "--resume", "--all", "--yes")
    assert res.returncode == 0, res.stderr
    assert "0 failed, 0 not moved" in res.stdout and not journal(node).exists()


def test_a_disk_info_that_is_not_novas_is_a_refusal_not_a_traceback(node: FakeNode) -> None:
    uuid = make_instance(node, "qcow2")
    (node.instances / uuid / "disk.info").write_text(
        '{"x": ["raw"], "y": ' + "[" * 5000 + "]" * 5000 + "}"
    )
    res = node.run("migrate", uuid, "--to", "flat", "--assume", FLAT.replace(" = ", "="), "--yes")
    assert "Traceback" not in res.stderr
    assert res.returncode == 1 and "disk.info has no entry" in res.stderr, res.stderr


def _hold_conversion(lock_path: str, ready, release) -> None:  # noqa: ANN001
    from storagectl.host.locks import host_lock

    with host_lock(lock_path, "conversion"):
        ready.set()
        release.wait(30)


def test_one_host_conversion_at_a_time(node: FakeNode) -> None:
    """A second --all (or --resume --all) while one runs is refused, nothing changed."""
    import multiprocessing

    uuid = make_instance(node, "qcow2")
    before = json.dumps(node.record(uuid))
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_conversion, args=(str(node.root / "locks"), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        for args in (("--all", "--to", "flat", "--yes"), ("--resume", "--all", "--yes")):
            res = node.run("migrate", *args)
            assert res.returncode == 1, res.stdout + res.stderr
            assert "another storagectl process converts it now" in res.stderr
            assert "Traceback" not in res.stderr
    finally:
        release.set()
        holder.join(10)
    assert json.dumps(node.record(uuid)) == before and not journal(node).exists()


@pytest.mark.parametrize(
    "data",
    [
        {"version": 1},
        {"version": 1, "uri": "x", "to": "flat", "options": {"to": "flat"}, "parallel": "two",
         "instances": []},
        {"version": 1, "uri": "x", "to": "flat", "options": {"to": "flat"}, "parallel": 1,
         "instances": [7]},
    ],
)  # fmt: skip
def test_a_host_journal_of_the_wrong_shape_is_a_clear_error(node: FakeNode, data: dict) -> None:
    journal(node).write_text(json.dumps(data))
    for args in (("--status",), ("--resume", "--all", "--yes")):
        res = node.run("migrate", *args)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "is not a storagectl host journal" in res.stderr
        assert str(journal(node)) in res.stderr and "Traceback" not in res.stderr


def test_the_nova_conf_after_is_journaled_for_resume_all(node: FakeNode, tmp_path: Path) -> None:
    """--nova-conf-after / --assume given at the start guard the moves --resume --all
    makes: the host journal keeps them (the files by absolute path)."""
    after = tmp_path / "nova-after.conf"
    after.write_text(node.conf.read_text() + "[libvirt]\nimages_type = flat\n")
    uuids = [make_instance(node, "qcow2") for _ in range(2)]
    res = node.killed(
        "migrate", "--all", "--to", "flat", "--nova-conf-after", str(after),
        "--assume", "[DEFAULT] use_cow_images=true", "--yes", fault="copy:before",
    )  # fmt: skip
    assert res.returncode == -signal.SIGKILL, res.stderr
    data = json.loads(journal(node).read_text())
    assert data["nova_after"] == {
        "files": [str(after)],
        "assume": [["DEFAULT", "use_cow_images", "true"]],
    }
    after.unlink()  # resume reads it again: a missing file is an error naming it
    res = node.run("migrate", "--resume", "--all", "--yes")
    assert res.returncode != 0 and str(after) in res.stderr and "Traceback" not in res.stderr
    after.write_text(node.conf.read_text() + "[libvirt]\nimages_type = flat\n")
    res = node.run("migrate", "--resume", "--all", "--yes")
    assert res.returncode == 0, res.stderr
    assert all(node.record(u)["disks"][0]["backend"] == "flat" for u in uuids)


def test_a_bwlimit_below_parallel_is_a_usage_error(node: FakeNode) -> None:
    make_instance(node, "qcow2")
    res = node.run("migrate", "--all", "--to", "flat", "--parallel", "4", "--bwlimit", "2", "--yes")
    assert res.returncode == 2 and "--bwlimit 2 MiB/s is shared by the --parallel 4" in res.stderr
