"""Issue #12, items 5 and 6: audit says UNKNOWN (3) whenever it could not audit, and its
Prometheus textfile says so (``storagectl_audit_up 0``); lock contention exits as
docs/record.md says, for every command that takes a lock.

Each case is a real condition (a lock path under a regular file, a textfile directory
that is missing, a character device, a full tmpfs, a lock file root cannot open once its
DAC capabilities are dropped) and checks that nothing else changed on disk.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storagectl.host.locks import host_lock, instance_lock
from tests.functional.test_audit import audit, metric, recorded_node

REPO = Path(__file__).resolve().parents[2]
DOCS_RECORD = REPO / "docs" / "record.md"


def tree_state(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every entry under ``root``: (mode, size, content of small regular files)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        small = stat.S_ISREG(st.st_mode) and st.st_size < (1 << 20)
        out[str(path.relative_to(root))] = (
            st.st_mode,
            st.st_size,
            path.read_bytes() if small else None,
        )
    return out


#: Run as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH: file modes then bind as for
#: an unprivileged user, so permission errors are real (``storagectl(..., prefix=...)``).
WITHOUT_DAC = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


def storagectl(*args: str, node=None, preexec=None, timeout: float = 60, prefix=()):
    """storagectl in a child process (``python -m storagectl``) against ``node``, its
    command line behind ``prefix`` (e.g. :data:`WITHOUT_DAC`)."""
    base = []
    if node is not None:
        base = ["-c", node.uri, "--nova-conf", str(node.conf)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("STORAGECTL_DEBUG", None)
    return subprocess.run(
        [*prefix, sys.executable, "-m", "storagectl", *base, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        preexec_fn=preexec,
        cwd=REPO,
    )


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "b'" not in err, err
    return lines[0]


def a_good_textfile(node, prom: Path) -> str:
    """Run a clean audit first: the textfile says up 1, with a last success."""
    code, _, err = audit(node, prom=prom)
    assert code == 0, err
    text = prom.read_text()
    assert "storagectl_audit_up 1" in text
    return metric(text, "storagectl_audit_last_success_timestamp_seconds")


def assert_down(prom: Path, last_success: str) -> None:
    text = prom.read_text()
    assert metric(text, "storagectl_audit_up") == "0"
    assert metric(text, "storagectl_audit_status") == "3"
    # the age alert keeps working: the last success is the good run's
    assert metric(text, "storagectl_audit_last_success_timestamp_seconds") == last_success
    # no stale finding counts from the good run
    assert "storagectl_findings" not in text


def test_lock_directory_unusable_is_3_and_textfile_says_down(mini_node, tmp_path):
    recorded_node(mini_node, 1)
    prom = tmp_path / "storagectl.prom"
    last = a_good_textfile(mini_node, prom)
    (tmp_path / "file").write_text("")
    before = tree_state(mini_node.instances)
    code, out, err = mini_node.run(
        "--lock-path", str(tmp_path / "file" / "locks"), "audit", "--prometheus", str(prom)
    )
    assert code == 3, err
    line = one_line(err)
    assert line.startswith("--> AuditFailed: cannot audit:") and "file/locks" in line
    assert_down(prom, last)
    assert tree_state(mini_node.instances) == before


def test_lock_file_permission_denied_is_3_without_python_bytes(mini_node, tmp_path):
    """Root without CAP_DAC_OVERRIDE (setpriv) cannot open a lock file in a 0500
    directory: the error says "Permission denied", never ``b'/...'``."""
    recorded_node(mini_node, 1)
    locks = tmp_path / "read-only-locks"
    locks.mkdir(mode=0o500)
    prom = tmp_path / "p.prom"
    last = a_good_textfile(mini_node, prom)
    res = storagectl(
        "--log-file",
        str(tmp_path / "log"),
        "--lock-path",
        str(locks),
        "audit",
        "--prometheus",
        str(prom),
        node=mini_node,
        prefix=WITHOUT_DAC,
    )
    assert res.returncode == 3, res.stderr
    line = one_line(res.stderr)
    assert "Permission denied" in line and str(locks) in line
    assert_down(prom, last)
    assert list(locks.iterdir()) == []


@pytest.mark.parametrize("case", ["missing-directory", "a-directory", "a-device"])
def test_textfile_that_cannot_be_written_is_3_and_nothing_is_replaced(mini_node, tmp_path, case):
    recorded_node(mini_node, 1)
    where = tmp_path / "textfiles"
    where.mkdir()
    if case == "missing-directory":
        prom = where / "nope" / "storagectl.prom"
        why = "No such file or directory"
    elif case == "a-directory":
        prom = where / "storagectl.prom"
        prom.mkdir()
        why = "is a directory"
    else:  # a character device: /dev/full's numbers, made here
        prom = where / "full"
        os.mknod(prom, stat.S_IFCHR | 0o666, os.makedev(1, 7))
        why = "not a regular file"
    before = tree_state(where)
    code, out, err = audit(mini_node, prom=prom)
    assert code == 3, err
    line = one_line(err)
    assert line.startswith("--> TextfileError:") and str(prom) in line and why in line
    assert tree_state(where) == before  # the device is still a device, no temp file


def test_textfile_directory_not_writable_is_3_permission_denied(mini_node, tmp_path):
    """Root without CAP_DAC_OVERRIDE (setpriv): a textfile directory of mode 0555."""
    recorded_node(mini_node, 1)
    where = tmp_path / "textfiles"
    where.mkdir(mode=0o555)
    res = storagectl(
        "--log-file",
        str(tmp_path / "log"),
        "--lock-path",
        str(tmp_path / "locks"),
        "audit",
        "--prometheus",
        str(where / "storagectl.prom"),
        node=mini_node,
        prefix=WITHOUT_DAC,
    )
    assert res.returncode == 3, res.stderr
    line = one_line(res.stderr)
    assert line == (
        f"--> TextfileError: cannot write the Prometheus textfile {where / 'storagectl.prom'}: "
        "Permission denied"
    )
    assert list(where.iterdir()) == []


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 64 KiB tmpfs, filled: every write to it fails with ENOSPC."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        with open(mnt / "filler", "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError:
                pass
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_textfile_on_a_full_disk_is_3(mini_node, full_tmpfs):
    recorded_node(mini_node, 1)
    prom = full_tmpfs / "storagectl.prom"
    code, out, err = audit(mini_node, prom=prom)
    assert code == 3, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines[-1].startswith("--> TextfileError:") and "No space left on device" in lines[-1]
    assert "Traceback" not in err
    assert sorted(p.name for p in full_tmpfs.iterdir()) == ["filler"]  # no temp file left


def test_unexpected_exception_is_3_and_textfile_says_down(mini_node, tmp_path, monkeypatch):
    recorded_node(mini_node, 1)
    prom = tmp_path / "p.prom"
    last = a_good_textfile(mini_node, prom)

    def broken(*_a, **_kw):
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr("storagectl.cli.audit.run_audit", broken)
    code, out, err = audit(mini_node, prom=prom)
    assert code == 3, err
    line = one_line(err)
    assert "AuditFailed" in line and "unexpected RuntimeError: something nobody expected" in line
    assert_down(prom, last)


def test_usage_error_of_audit_is_3_not_critical(mini_node):
    code, _, err = audit(mini_node, "--no-such-option")
    assert code == 3 and "No such option" in err


def test_empty_connect_uri_under_audit_is_3(mini_node):
    code, _, err = mini_node.run("-c", "", "audit")
    assert code == 3 and "empty URI" in err


# -- item 6: lock contention, as documented ------------------------------------------------


def documented_lock_statuses() -> dict[str, int]:
    """The table "Lock held by another storagectl" in docs/record.md: command -> status."""
    text = DOCS_RECORD.read_text()
    rows = re.findall(r"^\|\s*`(audit|persist|migrate)\b[^|]*\|[^|]*\|\s*(\d)\s*\|", text, re.M)
    return {cmd: int(code) for cmd, code in rows}


def _hold(kind, lock_path, name, ready, release):
    cm = host_lock(lock_path, name) if kind == "host" else instance_lock(lock_path, name)
    with cm:
        ready.set()
        release.wait(30)


def held(kind, lock_path, name):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(kind, str(lock_path), name, ready, release))
    proc.start()
    assert ready.wait(10)
    return proc, release


def test_lock_contention_exits_as_docs_record_md_says(mini_node, tmp_path):
    documented = documented_lock_statuses()
    assert set(documented) == {"audit", "persist", "migrate"}, documented
    (uuid,) = recorded_node(mini_node, 1)
    locks = mini_node.root / "locks"
    prom = tmp_path / "p.prom"
    before = tree_state(mini_node.instances)

    proc, release = held("host", locks, "audit")
    try:
        start = time.monotonic()
        code, _, err = audit(mini_node, prom=prom)
        assert time.monotonic() - start < 5
        assert code == documented["audit"] == 3
        assert "another storagectl audit is running" in one_line(err)
        assert metric(prom.read_text(), "storagectl_audit_up") == "0"
    finally:
        release.set()
        proc.join(10)

    proc, release = held("instance", locks, uuid)
    try:
        code, _, err = mini_node.run(
            "--lock-path", str(locks), "persist", uuid, "--force", "-o", "json"
        )
        assert code == documented["persist"], err
        # (migrate refuses the test driver before it takes a lock: its row is checked by
        # the libvirtd tier's migrate tests, not here)
    finally:
        release.set()
        proc.join(10)
    assert tree_state(mini_node.instances) == before
