"""RBD backend against canned output captured from the real rbd/ceph CLIs.

The outputs live in tests/fixtures/rbd (re-capture with
``python -m tests.fixtures.rbd.capture``). The backend here uses
``ceph_conf="CONF"`` and ``connect_timeout=3``, the values the capture used, so
the argv recorded with each captured failure must equal the argv the backend
builds.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from oslo_concurrency import processutils

from storagectl import errors
from storagectl.backends import rbd as rbd_module
from storagectl.backends.rbd import RBD, RBDImage, parse_free_bytes
from storagectl.host.process import Runner

FIXTURES = Path(__file__).parent.parent / "fixtures" / "rbd"
CONF = "CONF"
BASE = ("rbd", "--conf", CONF, "--id", "admin", "--client_mount_timeout", "3")
CEPH = ("ceph", "--conf", CONF, "--id", "admin", "--connect-timeout", "3")


@dataclass(frozen=True)
class Canned:
    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    timeout: bool = False


def ok(name: str) -> Canned:
    return Canned(stdout=(FIXTURES / f"{name}.json").read_text())


def failure(name: str) -> tuple[tuple[str, ...], Canned]:
    """The recorded argv and the captured failure of ``NAME.fail.json``."""
    record = json.loads((FIXTURES / f"{name}.fail.json").read_text())
    return tuple(record["argv"]), Canned(stderr=record["stderr"], exit_code=record["exit_code"])


class FakeExecutor:
    """processutils.execute stand-in: canned output looked up by argv prefix."""

    def __init__(self, responses: dict[tuple[str, ...], Canned]) -> None:
        self.responses = responses
        self.calls: list[tuple[str, ...]] = []
        self.kwargs: list[dict[str, Any]] = []

    def __call__(self, *argv: str, **kwargs: Any) -> tuple[str, str]:
        self.calls.append(argv)
        self.kwargs.append(kwargs)
        matches = [key for key in self.responses if argv[: len(key)] == key]
        if not matches:
            raise AssertionError(f"unexpected command: {argv}")
        canned = self.responses[max(matches, key=len)]
        if canned.timeout:
            raise subprocess.TimeoutExpired(list(argv), kwargs.get("timeout"))
        if canned.exit_code not in kwargs.get("check_exit_code", [0]):
            raise processutils.ProcessExecutionError(
                exit_code=canned.exit_code, stdout=canned.stdout, stderr=canned.stderr,
                cmd=" ".join(argv),
            )  # fmt: skip
        return canned.stdout, canned.stderr


def backend(responses: dict[tuple[str, ...], Canned], **kw: Any) -> tuple[RBD, FakeExecutor]:
    fake = FakeExecutor(responses)
    settings = {"pool": "vms", "ceph_conf": CONF, "user": "admin", "connect_timeout": 3, **kw}
    return RBD(Runner(execute=fake), **settings), fake


def backend_for_failure(name: str, **kw: Any) -> tuple[RBD, FakeExecutor, tuple[str, ...]]:
    argv, canned = failure(name)
    rbd, fake = backend({argv: canned}, **kw)
    return rbd, fake, argv


# -- listing and info -------------------------------------------------------------------


def test_list_images_parses_json_and_names_pool() -> None:
    rbd, fake = backend({(*BASE, "ls"): ok("ls")})
    assert rbd.list_images() == ["base", "clone", "nofastdiff"]
    assert fake.calls == [(*BASE, "ls", "--pool", "vms", "--format", "json")]


def test_list_long_gives_sizes_in_one_command_and_skips_snapshots() -> None:
    rbd, fake = backend({(*BASE, "ls", "-l"): ok("ls_long")})
    images = rbd.list_long()
    assert [(i.name, i.size, i.pool) for i in images] == [
        ("a", 4194304, "vms"),
        ("b", 1073741824, "vms"),
    ]
    assert fake.calls == [(*BASE, "ls", "-l", "--pool", "vms", "--format", "json")]


def test_list_images_of_empty_pool() -> None:
    rbd, _ = backend({(*BASE, "ls"): ok("ls_empty")})
    assert rbd.list_images() == []


def test_info_of_plain_image() -> None:
    rbd, fake = backend({(*BASE, "info"): ok("info")})
    assert rbd.info("base") == RBDImage(
        pool="vms",
        name="base",
        size=1048576,
        parent=None,
        features=("layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"),
    )
    assert fake.calls == [(*BASE, "info", "--format", "json", "vms/base")]


def test_info_of_clone_names_parent_snapshot() -> None:
    rbd, _ = backend({(*BASE, "info"): ok("info_clone")})
    image = rbd.info("clone")
    assert image is not None
    assert image.parent == "vms/base@snap1"
    assert image.spec == "vms/clone"


def test_info_of_layering_only_image() -> None:
    rbd, _ = backend({(*BASE, "info"): ok("info_layering_only")})
    image = rbd.info("nofastdiff")
    assert image is not None
    assert (image.size, image.features) == (12582912, ("layering",))


def test_info_of_missing_image_is_none_and_exists_false() -> None:
    rbd, fake, argv = backend_for_failure("info_missing")
    assert rbd.info("missing") is None
    assert rbd.exists("missing") is False
    assert fake.calls == [argv, argv]


def test_info_in_missing_pool_is_an_error_naming_the_pool() -> None:
    rbd, fake, argv = backend_for_failure("info_missing_pool", pool="nopool")
    with pytest.raises(errors.BackendError, match="nopool/missing") as exc:
        rbd.info("missing")
    assert "error opening pool 'nopool'" in str(exc.value)
    assert fake.calls == [argv]


# -- create / remove ---------------------------------------------------------------------


def test_create_passes_size_in_bytes_and_returns_info() -> None:
    rbd, fake = backend({(*BASE, "create"): Canned(), (*BASE, "info"): ok("info")})
    image = rbd.create("base", 1048576)
    assert image.size == 1048576
    assert fake.calls == [
        (*BASE, "create", "--size", "1048576B", "vms/base"),
        (*BASE, "info", "--format", "json", "vms/base"),
    ]


def test_create_existing_image_is_an_error() -> None:
    rbd, fake, argv = backend_for_failure("create_exists")
    with pytest.raises(errors.BackendError) as exc:
        rbd.create("base", 1048576)
    message = str(exc.value)
    assert "vms/base" in message and "(17) File exists" in message
    assert "2026-" not in message  # librbd's log prefix is stripped
    assert exc.value.backend == "rbd"
    assert fake.calls == [argv]


def test_remove_runs_rm_without_progress() -> None:
    rbd, fake = backend({(*BASE, "rm"): Canned()})
    rbd.remove("base")
    assert fake.calls == [(*BASE, "rm", "--no-progress", "vms/base")]


@pytest.mark.parametrize(
    ("name", "image", "says"),
    [("rm_missing", "missing", "No such file"), ("rm_has_snapshots", "base", "has snapshots")],
)
def test_remove_refusals_are_errors(name: str, image: str, says: str) -> None:
    rbd, fake, argv = backend_for_failure(name)
    with pytest.raises(errors.BackendError, match=f"vms/{image}") as exc:
        rbd.remove(image)
    assert says in str(exc.value)
    assert fake.calls == [argv]


def test_remove_of_an_open_image_names_its_watchers_and_does_not_wait_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv, canned = failure("rm_has_watchers")
    rbd, fake = backend({argv: canned, (*BASE, "status"): ok("status_watched")})
    monkeypatch.setattr(rbd_module.time, "sleep", lambda s: pytest.fail("slept"))
    with pytest.raises(errors.BackendError) as exc:
        rbd.remove("watched")
    message = str(exc.value)
    assert "vms/watched" in message
    assert "client 127.0.0.1:0/3447638200 still has it open" in message
    assert "osd_client_watch_timeout" in message and "after waiting" not in message
    assert fake.calls == [argv, (*BASE, "status", "--format", "json", "vms/watched")]


class Clock:
    """time.monotonic/time.sleep stand-in: sleeping advances the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_remove_waits_out_a_dead_writers_watch_when_told_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv, canned = failure("rm_has_watchers")
    rbd, fake = backend({argv: canned})
    clock = Clock()
    monkeypatch.setattr(rbd_module.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(rbd_module.time, "sleep", clock.sleep)

    def watch_expires_after_three_tries(*a: str, **kw: Any) -> tuple[str, str]:
        if len(fake.calls) == 3:  # the OSD has expired the watch by the fourth try
            fake.responses[argv] = Canned()
        return fake(*a, **kw)

    rbd.runner = Runner(execute=watch_expires_after_three_tries)
    rbd.remove("watched", stale_watch_wait=45)
    assert fake.calls == [argv] * 4
    assert clock.slept == [2.0, 2.0, 2.0]


def test_remove_gives_up_after_the_wait_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    argv, canned = failure("rm_has_watchers")
    rbd, fake = backend({argv: canned, (*BASE, "status"): ok("status_watched")})
    clock = Clock()
    monkeypatch.setattr(rbd_module.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(rbd_module.time, "sleep", clock.sleep)
    with pytest.raises(errors.BackendError, match="after waiting 46 s") as exc:
        rbd.remove("watched", stale_watch_wait=45)  # the time it really waited
    assert "127.0.0.1:0/3447638200" in str(exc.value)
    assert sum(clock.slept) >= 45 and len(clock.slept) == 23  # every 2 s, then one last try
    assert fake.calls.count(argv) == 24


def test_remove_does_not_wait_on_other_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    rbd, fake, argv = backend_for_failure("rm_has_snapshots")
    monkeypatch.setattr(rbd_module.time, "sleep", lambda s: pytest.fail("slept"))
    with pytest.raises(errors.BackendError, match="has snapshots"):
        rbd.remove("base", stale_watch_wait=45)
    assert fake.calls == [argv]


def test_remove_retries_when_librbd_logs_after_the_refusal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The refusal is matched in the whole stderr, not only in the last lines the error
    message keeps; the wait is told once as a warning, then at debug level."""
    argv, canned = failure("rm_has_watchers")
    noisy = Canned(
        stderr=canned.stderr + "2026-11-24T07:46:55.800+0000 7f17 -1 librbd: a later line\n"
        "2026-11-24T07:46:55.801+0000 7f17 -1 librbd: and another\n",
        exit_code=canned.exit_code,
    )
    rbd, fake = backend({argv: noisy})
    clock = Clock()
    monkeypatch.setattr(rbd_module.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(rbd_module.time, "sleep", clock.sleep)

    def expires_after_three_tries(*a: str, **kw: Any) -> tuple[str, str]:
        if len(fake.calls) == 3:
            fake.responses[argv] = Canned()
        return fake(*a, **kw)

    rbd.runner = Runner(execute=expires_after_three_tries)
    with caplog.at_level("DEBUG", logger="storagectl.backends.rbd"):
        rbd.remove("watched", stale_watch_wait=45)
    assert fake.calls == [argv] * 4
    told = [r.levelname for r in caplog.records if "still open by a client" in r.message]
    assert told == ["WARNING", "DEBUG", "DEBUG"]


@pytest.mark.parametrize("out", ["", "[]", '{"watchers": 3}', "not json"])
def test_unreadable_rbd_status_is_a_backend_error(out: str) -> None:
    rbd, _ = backend({(*BASE, "status"): Canned(stdout=out)})
    with pytest.raises(errors.BackendError, match="rbd status"):
        rbd.watchers("watched")


def test_watchers_parses_rbd_status() -> None:
    rbd, fake = backend({(*BASE, "status"): ok("status_watched")})
    assert rbd.watchers("watched") == ["127.0.0.1:0/3447638200"]
    rbd, fake = backend({(*BASE, "status"): ok("status_no_watchers")})
    assert rbd.watchers("watched") == []


# -- metadata ------------------------------------------------------------------------------


def test_get_meta() -> None:
    rbd, fake = backend({(*BASE, "image-meta", "list"): ok("image_meta_list")})
    assert rbd.get_meta("base") == {"key with spaces": "-1", "storagectl.layout": "rbd"}
    assert fake.calls == [(*BASE, "image-meta", "list", "--format", "json", "vms/base")]


def test_get_meta_of_image_without_metadata_is_empty() -> None:
    # rbd prints nothing at all here, not "{}".
    assert (FIXTURES / "image_meta_list_empty.json").read_text() == ""
    rbd, _ = backend({(*BASE, "image-meta", "list"): ok("image_meta_list_empty")})
    assert rbd.get_meta("clone") == {}


def test_set_meta_separates_key_and_value_with_double_dash() -> None:
    rbd, fake = backend({(*BASE, "image-meta", "set"): Canned()})
    rbd.set_meta("base", "key with spaces", "-1")
    assert fake.calls == [(*BASE, "image-meta", "set", "vms/base", "--", "key with spaces", "-1")]


def test_remove_meta_of_missing_key_is_an_error() -> None:
    rbd, fake, argv = backend_for_failure("image_meta_remove_missing")
    with pytest.raises(errors.BackendError, match="'nope' from vms/base"):
        rbd.remove_meta("base", "nope")
    assert fake.calls == [argv]


# -- snapshots and usage ------------------------------------------------------------------


def test_list_snapshots() -> None:
    rbd, fake = backend({(*BASE, "snap", "ls"): ok("snap_ls")})
    assert rbd.list_snapshots("base") == ["snap1", "snap2"]
    assert fake.calls == [(*BASE, "snap", "ls", "--format", "json", "vms/base")]


def test_list_snapshots_none_and_missing_image() -> None:
    rbd, _ = backend({(*BASE, "snap", "ls"): ok("snap_ls_empty")})
    assert rbd.list_snapshots("clone") == []
    rbd, _, _ = backend_for_failure("snap_ls_missing")
    with pytest.raises(errors.BackendError, match="vms/missing"):
        rbd.list_snapshots("missing")


def test_disk_usage_reads_the_head_row_not_snapshots() -> None:
    rbd, fake = backend({(*BASE, "du"): ok("du")})
    assert rbd.disk_usage("base") == 0
    assert fake.calls == [(*BASE, "du", "--format", "json", "vms/base")]


def test_disk_usage_without_fast_diff_counts_whole_objects() -> None:
    # 6 MiB written into 4 MiB objects -> two objects allocated.
    rbd, _ = backend({(*BASE, "du"): ok("du_no_fast_diff")})
    assert rbd.disk_usage("nofastdiff") == 8 * 1024 * 1024


def test_disk_usage_of_other_image_row_is_none() -> None:
    rbd, _ = backend({(*BASE, "du"): ok("du_no_fast_diff")})
    assert rbd.disk_usage("base") is None


def test_disk_usage_of_missing_image_is_an_error() -> None:
    rbd, fake, argv = backend_for_failure("du_missing")
    with pytest.raises(errors.BackendError, match="measure image vms/missing"):
        rbd.disk_usage("missing")
    assert fake.calls == [argv]


# -- free space -----------------------------------------------------------------------------


def test_free_bytes_without_mgr_is_none() -> None:
    rbd, fake = backend({(*CEPH, "df"): ok("ceph_df_no_mgr")})
    assert rbd.free_bytes() is None
    assert fake.calls == [(*CEPH, "df", "--format", "json")]


def test_free_bytes_reads_pool_max_avail_when_a_mgr_reported() -> None:
    # Not captured (the test cluster has no mgr): the fields of a mgr-backed
    # `ceph df --format json`, cut down to what the parser reads.
    data = {
        "stats": {"total_bytes": 10737418240, "total_avail_bytes": 9663676416},
        "pools": [{"name": "vms", "id": 1, "stats": {"stored": 1048576, "max_avail": 3221225472}}],
    }
    assert parse_free_bytes(data, "vms") == 3221225472
    assert parse_free_bytes(data, "images") is None


def test_free_bytes_with_mon_down_is_unreachable() -> None:
    argv, canned = failure("ceph_df_mon_down")
    rbd, fake = backend({argv: canned}, ceph_conf=argv[2])
    with pytest.raises(errors.CephUnreachable, match="timed out"):
        rbd.free_bytes()
    assert fake.calls == [argv]


# -- ping and connection errors ----------------------------------------------------------


def test_ping_bounds_every_wait() -> None:
    rbd, fake = backend({(*BASE, "--rados_mon_op_timeout"): ok("ls")})
    rbd.ping()
    assert fake.calls == [
        (*BASE, "--rados_mon_op_timeout", "3", "--rados_osd_op_timeout", "3",
         "ls", "--pool", "vms", "--format", "json"),
    ]  # fmt: skip
    assert fake.kwargs[0]["timeout"] == 3 * 3 + 5  # the process backstop


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("ls_mon_down", "couldn't connect to the cluster!; rbd: listing images failed: (110)"),
        ("ls_unknown_user", "(13) Permission denied"),
        ("ls_missing_conf", "unable to open config file"),
    ],
)
def test_connection_failures_are_ceph_unreachable(name: str, says: str) -> None:
    argv, canned = failure(name)
    # Captured with plain `ls`; every rbd call classifies stderr the same way.
    rbd, _ = backend({argv[:3]: canned}, ceph_conf=argv[2], user=argv[4])
    with pytest.raises(errors.CephUnreachable) as exc:
        rbd.list_images()
    assert says in str(exc.value)
    assert exc.value.conf == argv[2]
    assert exc.value.user == argv[4]


def test_ping_that_hangs_past_the_backstop_is_unreachable() -> None:
    rbd, _ = backend({BASE: Canned(timeout=True)})
    with pytest.raises(errors.CephUnreachable, match="no answer within 14 s"):
        rbd.ping()


def test_other_command_timeouts_are_backend_errors() -> None:
    rbd, _ = backend({BASE: Canned(timeout=True)})
    with pytest.raises(errors.BackendError, match="measure image vms/big"):
        rbd.disk_usage("big")


def test_no_user_means_no_id_and_default_conf() -> None:
    fake = FakeExecutor({("rbd",): ok("ls")})
    rbd = RBD(Runner(execute=fake), pool="vms", ceph_conf="", connect_timeout=10)
    rbd.list_images()
    assert fake.calls == [
        ("rbd", "--conf", "/etc/ceph/ceph.conf", "--client_mount_timeout", "10",
         "ls", "--pool", "vms", "--format", "json"),
    ]  # fmt: skip


def test_constructor_runs_nothing() -> None:
    fake = FakeExecutor({})
    RBD(Runner(execute=fake), pool="vms")
    assert fake.calls == []


# -- names ----------------------------------------------------------------------------------


def test_qemu_uri() -> None:
    rbd, _ = backend({}, ceph_conf="/etc/ceph/ceph.conf", user="nova")
    assert rbd.qemu_uri("u_disk") == "rbd:vms/u_disk:id=nova:conf=/etc/ceph/ceph.conf"


def test_qemu_uri_without_user_and_with_colon_in_conf() -> None:
    rbd, _ = backend({}, ceph_conf="/etc/ceph/a:b.conf", user=None)
    assert rbd.qemu_uri("u_disk") == "rbd:vms/u_disk:conf=/etc/ceph/a\\:b.conf"


def test_volume_name_is_novas() -> None:
    assert RBD.volume_name("0e5b", "disk.config") == "0e5b_disk.config"
