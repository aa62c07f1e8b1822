"""The install tier: storagectl as an operator installs it, not as an editable checkout.

A clean venv gets the runtime lock (``requirements.lock``, hashes checked, build tools
first and no build isolation - exactly the README's compute-host recipe), then a real,
non-editable ``pip install .``; the installed console script must run from the venv,
import storagectl from the venv's site-packages, and the build must print no setuptools
deprecation warning.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.install


def _run(argv, **kw):
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=kw.pop("cwd", REPO), **kw)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel") / "venv"
    _run([sys.executable, "-m", "venv", str(root)])
    pip = [str(root / "bin" / "python"), "-m", "pip"]
    build = tmp_path_factory.mktemp("lock") / "build-tools.txt"
    pick = [sys.executable, "scripts/lockpick.py", "requirements.lock", "setuptools", "wheel"]
    tools = _run(pick)
    build.write_text(tools.stdout)
    _run([*pip, "install", "-q", "--require-hashes", "--no-deps", "-r", str(build)])
    _run(
        [
            *pip,
            "install",
            "-q",
            "--require-hashes",
            "--no-deps",
            "--no-build-isolation",
            "-r",
            "requirements.lock",
        ]
    )
    # A copy of the tree, so the build leaves nothing (build/, *.egg-info) in the checkout.
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for rel in filter(None, files):
        rel = rel.decode()
        if not (REPO / rel).is_file():
            continue
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((REPO / rel).read_bytes())
    installed = _run([*pip, "install", "-v", "--no-deps", "--no-build-isolation", str(src)])
    return root, installed.stdout + installed.stderr


def test_build_prints_no_deprecation_warning(venv):
    _root, log = venv
    assert "Successfully installed storagectl" in log
    bad = [line for line in log.splitlines() if re.search(r"Deprecat|License classifiers", line)]
    assert not bad, "\n".join(bad)


def test_installed_console_script_runs(venv):
    root, _log = venv
    from storagectl import __version__

    out = _run([str(root / "bin" / "storagectl"), "--version"], env={"PATH": "/usr/bin:/bin"})
    assert __version__ in out.stdout
    out = _run([str(root / "bin" / "storagectl"), "--help"], env={"PATH": "/usr/bin:/bin"})
    for command in ("inspect", "persist", "show", "audit", "migrate"):
        assert command in out.stdout


def test_installed_package_is_not_the_checkout(venv):
    root, _log = venv
    out = _run(
        [
            str(root / "bin" / "python"),
            "-c",
            "import storagectl, libvirt, yaml, click, rich, oslo_concurrency;"
            "print(storagectl.__file__)",
        ],
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    where = Path(out.stdout.strip())
    assert root in where.parents, where
    assert not (where.parent / ".." / ".git").exists()
    # Data the commands load at run time came along in the wheel.
    pkg = where.parent
    assert any(pkg.rglob("*.py"))
    assert os.path.getsize(where) > 0


def test_runtime_lock_matches_test_lock():
    """The compute-host lock and the test lock pin the same versions and hashes."""
    sys.path.insert(0, str(REPO / "scripts"))
    import lockpick

    runtime = dict(lockpick.entries((REPO / "requirements.lock").read_text()))
    test = dict(lockpick.entries((REPO / "requirements-test.lock").read_text()))
    assert runtime and set(runtime) <= set(test)

    def pins(block):
        return [ln.strip(" \\") for ln in block.splitlines() if not ln.strip().startswith("#")]

    for name, block in runtime.items():
        assert pins(block) == pins(test[name]), name
