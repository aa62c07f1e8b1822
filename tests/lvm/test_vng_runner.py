"""The guest-tier runner (tests/env/vng.py) reports pytest's exit status faithfully.

Boots one virtme-ng guest (about 40 s under TCG) running a two-test file, one
of which fails: run-tier must exit 1 - pytest's "tests failed" - not vng's or
the guest's shutdown status, and junit.xml must say what failed.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

from tests.env import vng

PROBE = """\
def test_passes():
    assert True


def test_fails_on_purpose():
    assert 1 + 1 == 3
"""


def test_a_failing_guest_test_makes_run_tier_exit_1(tmp_path):
    probe = tmp_path / "test_probe.py"  # visible to the guest: / is shared read-only
    probe.write_text(PROBE)
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable, "-m", "tests.env.vng", "run-tier",
            "--vng-out", str(out), "--vng-tests", str(probe), "-q",
        ],
        cwd=vng.REPO, capture_output=True, text=True, timeout=vng.DEFAULT_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "exit_status").read_text().strip() == "1"
    assert "guest status 1, vng exit 1 -> exit 1" in result.stderr
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    assert "1 failed, 1 passed" in result.stdout


def test_combine_prefers_pytest_status_and_never_hides_a_failure():
    assert vng._combine(0, 0) == 0
    assert vng._combine(1, 1) == 1
    assert vng._combine(0, 5) == 5  # pytest: no tests collected
    assert vng._combine(3, 0) == 3  # tests passed, guest/vng failed afterwards
    assert vng._combine(0, None) == vng.NO_STATUS  # guest never reported
    assert vng._combine(None, None) == vng.NO_STATUS  # timeout
