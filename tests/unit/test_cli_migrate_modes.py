"""``storagectl migrate``: one mode per command line, and no option a mode would ignore.

Conflicts are refused as a usage error (exit 2) before anything is touched: no lock
file, no journal, no libvirt connection. Today's "last flag wins" turned
``--resume --rollback`` into an undo.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from storagectl.cli import cli
from storagectl.cli.app import Application
from storagectl.host.locks import instance_lock

# New in this change (imported where used, so that the behaviour tests run - and
# fail - on the code before it): storagectl.cli.migrate.command,
# storagectl.audit.interrupted, storagectl.migrate.engine.driver_problem.
U = "5eed0001-0000-4000-8000-000000000001"


def invoke(tmp_path: Path, *args: str, uri: str = "qemu:///system"):
    (tmp_path / "nova.conf").write_text(f"[DEFAULT]\ninstances_path = {tmp_path / 'instances'}\n")
    (tmp_path / "instances").mkdir(exist_ok=True)
    res = CliRunner().invoke(
        cli,
        [
            "-c",
            uri,
            "--nova-conf",
            str(tmp_path / "nova.conf"),
            "--lock-path",
            str(tmp_path / "locks"),
            "--log-file",
            str(tmp_path / "log"),
            "migrate",
            *args,
        ],
    )
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--resume", "--rollback", U), "--resume and --rollback cannot be combined"),
        (("--rollback", "--resume", U), "--resume and --rollback cannot be combined"),
        ((U, "--resume", "--to", "lvm"), "--to and --resume cannot be combined"),
        (("--status", "--to", "flat"), "--to and --status cannot be combined"),
        (("--delete-retained", "--rollback", U), "--rollback and --delete-retained cannot"),
        (
            ("--rollback", U, "--volume-group", "vg0"),
            "--volume-group does not apply to --rollback (it is an option of --to)",
        ),
        (("--resume", U, "--parallel", "4"), "--parallel does not apply to --resume"),
        (("--resume", U, "--disks", "root"), "--disks does not apply to --resume"),
        (("--delete-retained", U, "--delete-source"), "--delete-source does not apply"),
        (("--status", "--dry-run"), "--dry-run does not apply to --status"),
        (("--status", "--yes"), "--yes does not apply to --status"),
        (("--rollback", U, "--pool", "vms"), "--pool does not apply to --rollback"),
    ],
)
def test_conflicting_modes_and_ignored_options_are_usage_errors(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    res = invoke(tmp_path, *args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("--> UsageError: "), res.stderr
    assert message in lines[0]
    # refused before anything was touched: not even the lock directory exists
    assert not (tmp_path / "locks").exists()


@pytest.mark.parametrize("mode", ["--resume", "--rollback", "--delete-retained"])
def test_changing_modes_need_yes_without_a_terminal(tmp_path: Path, mode: str) -> None:
    res = invoke(tmp_path, mode, U)
    assert res.exit_code == 2, res.output
    assert "stdin is not a terminal: confirm with --yes" in res.stderr
    assert not (tmp_path / "locks").exists()


@pytest.mark.parametrize("mode", ["--resume", "--rollback"])
def test_dry_run_of_a_journal_mode_without_a_journal_says_so(tmp_path: Path, mode: str) -> None:
    res = invoke(tmp_path, mode, U, "--dry-run")
    assert res.exit_code == 1, res.output
    assert f"NoMigration: no migration of {U} is in progress" in res.stderr


@pytest.mark.parametrize(
    "args",
    [
        (U, "--to", "flat", "--yes"),
        (U, "--to", "flat", "--dry-run"),
        ("--resume", U, "--yes"),
        ("--rollback", U, "--dry-run"),
    ],
)
def test_the_test_driver_is_refused_up_front(tmp_path: Path, args: tuple[str, ...]) -> None:
    res = invoke(tmp_path, *args, uri="test:///default")
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("--> DriverUnsupported: cannot migrate on test:///default: ")
    assert "forgets a redefined domain" in lines[0]
    assert not (tmp_path / "locks").exists()


@pytest.mark.parametrize(
    ("uri", "refused"),
    [
        ("test:///default", True),
        ("test+unix:///default", True),
        ("TEST:///tmp/node.xml", True),
        ("qemu:///system", False),
        ("qemu+ssh://cn2/system", False),
        ("lxc:///", False),
    ],
)
def test_driver_problem_by_scheme(uri: str, refused: bool) -> None:
    from storagectl.migrate.engine import driver_problem

    assert (driver_problem(uri) is not None) is refused


def test_resume_and_rollback_commands_are_exact() -> None:
    from storagectl.cli.migrate import command

    app = Application(
        connect=("qemu:///system",),
        nova_conf=("/etc/nova/nova.conf", "/etc/nova/my dir/extra.conf"),
        lock_path="/run/locks",
    )
    assert command(app, "resume", U) == (
        "storagectl -c qemu:///system --nova-conf /etc/nova/nova.conf "
        f"--nova-conf '/etc/nova/my dir/extra.conf' --lock-path /run/locks migrate --resume {U}"
    )
    plain = Application(connect=("qemu:///system",))
    assert command(plain, "rollback", U) == f"storagectl -c qemu:///system migrate --rollback {U}"


def _hold(lock_path: str, ready, release) -> None:  # noqa: ANN001
    with instance_lock(lock_path, U):
        ready.set()
        release.wait(30)


def test_a_running_migration_is_told_from_a_dead_one_by_its_lock(tmp_path: Path) -> None:
    from storagectl.audit.interrupted import (
        INTERRUPTED,
        RUNNING,
        lock_holder,
        migration_state,
    )

    locks = str(tmp_path / "locks")
    # never locked: no lock file at all
    assert lock_holder(locks, U) is None
    dead_pid = _dead_pid()
    state, detail = migration_state(dead_pid, locks, U)
    assert state == INTERRUPTED and f"pid {dead_pid} is gone" in detail
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(locks, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        assert lock_holder(locks, U) == holder.pid
        state, detail = migration_state(dead_pid, locks, U)
        assert state == RUNNING and f"pid {holder.pid} holds the instance lock" in detail
    finally:
        release.set()
        holder.join(10)
    # released (the lock file stays): interrupted again
    assert os.path.exists(os.path.join(locks, f"storagectl-{U}"))
    assert lock_holder(locks, U) is None
    state, detail = migration_state(os.getpid(), locks, U)
    assert state == INTERRUPTED and "is alive but nobody holds the instance lock" in detail


def _dead_pid() -> int:
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=lambda: None)
    child.start()
    child.join(10)
    return child.pid
