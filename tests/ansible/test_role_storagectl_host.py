"""The storagectl_host role, run for real into a temporary prefix on this machine.

What is real: the venv (python3 -m venv), requirements.lock installed with pip
--require-hashes (build tools first, then no build isolation, libvirt-python built from
its sdist), the storagectl wheel built from this checkout with ``pip wheel --no-deps``, the
link to the console script, the rendered systemd units and cron file.
Not tested here (no systemd runs on this machine, and the system must not change): the
apt task (storagectl_host_install_system_packages: false) and enabling/starting the timer
(storagectl_host_manage_services: false); the contrib units themselves are checked with
``systemd-analyze verify`` in the functional tier, and the rendered ones are compared with
them here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ansible.conftest import REPO, Fleet

CONTRIB = REPO / "contrib"
ROLE = REPO / "ansible/ansible_collections/storagectl/fleet/roles/storagectl_host"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel --no-deps`` of a copy of the tree (the build leaves nothing behind)."""
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for rel in filter(None, (f.decode() for f in files)):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((REPO / rel).read_bytes())
    out = tmp_path_factory.mktemp("wheels")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    (built,) = out.glob("storagectl-*.whl")
    return built


def role_play(fleet: Fleet, prefix: Path, wheel: Path, scheduler: str, textfile: str) -> Path:
    play = [
        {
            "name": "Install storagectl",
            "hosts": "all",
            "gather_facts": False,
            "roles": [{"role": "storagectl.fleet.storagectl_host"}],
            "vars": {
                "storagectl_host_venv": str(prefix / "opt/storagectl"),
                "storagectl_host_bin_link": str(prefix / "usr/local/bin/storagectl"),
                "storagectl_host_requirements_lock": str(REPO / "requirements.lock"),
                "storagectl_host_wheel": str(wheel),
                "storagectl_host_install_system_packages": False,
                "storagectl_host_manage_services": False,
                "storagectl_host_audit_scheduler": scheduler,
                "storagectl_host_systemd_dir": str(prefix / "etc/systemd/system"),
                "storagectl_host_cron_file": str(prefix / "etc/cron.d/storagectl-audit"),
                "storagectl_host_textfile_dir": textfile,
            },
        }
    ]
    for sub in ("usr/local/bin", "etc/systemd/system", "etc/cron.d"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    path = fleet.root / f"install-{scheduler}.yml"
    path.write_text(json.dumps(play))
    return path


def norm(requirement: str) -> str:
    """``Oslo.Concurrency==7.6.1`` -> ``oslo-concurrency==7.6.1`` (PEP 503 names)."""
    name, sep, rest = requirement.partition("==")
    return re.sub(r"[-_.]+", "-", name).lower() + sep + rest


def rendered(path: Path) -> str:
    first, rest = path.read_text().split("\n", 1)
    assert first.startswith("# ") and "Ansible" in first  # the ansible_managed line
    return rest


def test_the_role_installs_from_the_lock_into_a_prefix_idempotently(
    fleet: Fleet, wheel: Path, tmp_path: Path
) -> None:
    fleet.hosts["cn1"] = _local("cn1")
    fleet.write_inventory()
    prefix = tmp_path / "root"
    prefix.mkdir()
    playbook = role_play(fleet, prefix, wheel, "systemd", "/var/lib/prometheus/node-exporter")
    venv = prefix / "opt/storagectl"

    run = fleet.play(str(playbook), "--check")
    assert run.rc == 0, run.output
    assert not venv.exists() and not (prefix / "usr/local/bin/storagectl").exists()

    run = fleet.play(str(playbook))
    assert run.rc == 0, run.output
    link = prefix / "usr/local/bin/storagectl"
    assert link.is_symlink() and link.resolve() == (venv / "bin/storagectl").resolve()
    version = subprocess.run([str(link), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "storagectl" in version.stdout
    # exactly the lock's versions (and storagectl from the wheel, not an editable checkout)
    freeze = [
        norm(line)
        for line in subprocess.run(
            [str(venv / "bin/pip"), "freeze", "--all"], capture_output=True, text=True
        ).stdout.splitlines()
    ]
    locked = [
        norm(line.split(" ")[0])
        for line in (REPO / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith((" ", "#"))
    ]
    assert set(locked) <= set(freeze), set(locked) - set(freeze)
    assert any(
        line.startswith("storagectl @ file://") or line.startswith("storagectl==")
        for line in freeze
    ), freeze
    units = prefix / "etc/systemd/system"
    for name in ("storagectl-audit.service", "storagectl-audit.timer"):
        want = (CONTRIB / name).read_text().replace("/usr/local/bin/storagectl", str(link))
        assert rendered(units / name) == want, name
    assert not (prefix / "etc/cron.d/storagectl-audit").exists()

    again = fleet.play(str(playbook))
    assert again.rc == 0, again.output
    assert again.recap["cn1"]["changed"] == 0 and again.recap["cn1"]["failed"] == 0

    # the cron variant, without a textfile (a host without node_exporter), same prefix
    run = fleet.play(
        str(playbook),
        "-e",
        json.dumps({"storagectl_host_audit_scheduler": "cron", "storagectl_host_textfile_dir": ""}),
    )
    assert run.rc == 0, run.output
    cron = rendered(prefix / "etc/cron.d/storagectl-audit")
    want = (
        (CONTRIB / "storagectl-audit.cron")
        .read_text()
        .replace("/usr/local/bin/storagectl", str(link))
        .replace(" --prometheus /var/lib/prometheus/node-exporter/storagectl.prom", "")
    )
    assert cron == want
    (line,) = [x for x in cron.splitlines() if x.startswith("*/15")]
    assert line.endswith("audit --quiet")


def _local(name: str):
    from tests.ansible.conftest import Host

    return Host(
        name,
        Path("/nonexistent"),
        {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
    )


def test_lockpick_of_the_role_is_the_scripts_one() -> None:
    """The role picks the build tools from the lock with a copy of scripts/lockpick.py."""
    assert (ROLE / "files/lockpick.py").read_bytes() == (REPO / "scripts/lockpick.py").read_bytes()
