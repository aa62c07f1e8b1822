"""The root group: global options with env fallbacks, and the one error renderer."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from storagectl import errors
from storagectl.cli import cli
from storagectl.cli.app import Application


def invoke(*args, env=None, tmp_path=None):
    base = ["--log-file", str(tmp_path / "log")] if tmp_path else []
    return CliRunner().invoke(cli, [*base, *args], env=env)


def test_help_names_every_env_fallback_and_command():
    res = invoke("--help")
    assert res.exit_code == 0
    for var in (
        "STORAGECTL_CONNECT",
        "STORAGECTL_NOVA_CONF",
        "STORAGECTL_LOCK_PATH",
        "STORAGECTL_VERBOSE",
        "STORAGECTL_LOG_FILE",
    ):
        assert var in res.stdout
    for command in ("inspect", "persist", "show", "audit", "sandbox"):
        assert f"  {command} " in res.stdout


def test_env_fallbacks_reach_the_application(tmp_path, monkeypatch):
    seen = {}

    @cli.command("probe-settings")
    def probe(**_kw):
        import click

        app = click.get_current_context().obj
        seen.update(uris=app.uris, nova=app.nova_conf, lock=app.lock_path)

    try:
        res = invoke(
            "probe-settings",
            tmp_path=tmp_path,
            env={
                "STORAGECTL_CONNECT": "test:///default qemu+ssh://cn2/system",
                "STORAGECTL_NOVA_CONF": "/a.conf /b.conf",
                "STORAGECTL_LOCK_PATH": str(tmp_path / "locks"),
            },
        )
        assert res.exit_code == 0, res.output
        assert seen == {
            "uris": ["test:///default", "qemu+ssh://cn2/system"],
            "nova": ("/a.conf", "/b.conf"),
            "lock": str(tmp_path / "locks"),
        }
    finally:
        cli.commands.pop("probe-settings")


def test_default_uri_is_libvirts_own(monkeypatch):
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    assert Application().uris == ["qemu:///system"]
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu:///session")
    assert Application().uris == ["qemu:///session"]


@pytest.fixture
def failing_command():
    def add(exc):
        @cli.command("boom")
        def boom():
            raise exc

    yield add
    cli.commands.pop("boom", None)


def test_storagectl_error_is_one_line_with_its_exit_code(failing_command, tmp_path):
    failing_command(errors.VolumeGroupNotFound(vg_name="nova-vg"))
    res = invoke("boom", tmp_path=tmp_path)
    assert res.exit_code == 1
    assert res.stderr == "--> VolumeGroupNotFound: volume group nova-vg not found\n"
    assert "Traceback" in (tmp_path / "log").read_text()


def test_unexpected_error_points_at_the_log(failing_command, tmp_path):
    failing_command(ZeroDivisionError("oops"))
    res = invoke("boom", tmp_path=tmp_path)
    assert res.exit_code == 1
    assert res.stderr.startswith("--> UnexpectedError: ZeroDivisionError: oops")
    assert str(tmp_path / "log") in res.stderr
    assert "Traceback" not in res.stderr
    assert "ZeroDivisionError" in (tmp_path / "log").read_text()


def test_storagectl_debug_reraises(failing_command, tmp_path):
    failing_command(errors.VolumeGroupNotFound(vg_name="vg0"))
    res = invoke("boom", tmp_path=tmp_path, env={"STORAGECTL_DEBUG": "1"})
    assert isinstance(res.exception, errors.VolumeGroupNotFound)


def test_unwritable_explicit_log_file_is_a_usage_error():
    res = CliRunner().invoke(cli, ["--log-file", "/proc/nope/log", "inspect"])
    assert res.exit_code == 2 and "cannot write log file /proc/nope/log" in res.stderr
