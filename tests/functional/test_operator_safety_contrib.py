"""Issue #12, item 17: the contrib/ systemd units and cron file work on a fresh host.

``systemd-analyze verify`` (offline: no systemd needs to run) checks the units against a
root holding this machine's system units and an executable where the README installs
storagectl; the rest is what verify cannot see - paths a fresh host may not have, the
binary path, the libvirt daemons, Debian's node_exporter textfile directory."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib"
UNITS = ("storagectl-audit.service", "storagectl-audit.timer")
DEBIAN_TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"


def readme_binary() -> str:
    """Where the README's "Installing storagectl on a compute host" puts the command."""
    readme = (REPO / "README.md").read_text()
    (link,) = re.findall(r"^# ln -s \S+ (\S+)$", readme, re.M)
    return link


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> every value given (keys may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in (CONTRIB / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def words(values: list[str]) -> list[str]:
    return [w for v in values for w in v.split()]


@pytest.fixture
def fresh_root(tmp_path):
    """A root with the system's units, the README's binary and our units - and nothing
    else: no /var/log/storagectl, /var/lib/storagectl or node_exporter directory."""
    root = tmp_path / "root"
    system = Path("/usr/lib/systemd/system")
    shutil.copytree(system, root / system.relative_to("/"), symlinks=True)
    binary = root / readme_binary().lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for name in UNITS:
        shutil.copy(CONTRIB / name, etc / name)
    return root


def test_systemd_analyze_verify_passes(fresh_root):
    assert shutil.which("systemd-analyze"), "scripts/setup.sh installs systemd"
    res = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            f"--root={fresh_root}",
            *(f"/etc/systemd/system/{name}" for name in UNITS),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    # and verify really checks: a unit whose binary is not where it says fails
    broken = fresh_root / "etc/systemd/system/storagectl-audit.service"
    broken.write_text(broken.read_text().replace(readme_binary(), "/nonexistent/storagectl"))
    inside = "/" + str(broken.relative_to(fresh_root))
    res = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={fresh_root}", inside],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0 and "/nonexistent/storagectl" in res.stderr


def exec_start() -> list[str]:
    (cmd,) = unit("storagectl-audit.service")["Service"]["ExecStart"]
    return shlex.split(cmd)


def test_binary_is_the_one_the_readme_installs():
    assert exec_start()[0] == readme_binary() == "/usr/local/bin/storagectl"
    cron = (CONTRIB / "storagectl-audit.cron").read_text().splitlines()
    (line,) = [x for x in cron if x.startswith("*/")]
    assert shlex.split(line)[6] == readme_binary()  # m h dom mon dow user COMMAND


def test_textfile_goes_to_debians_node_exporter_directory():
    args = exec_start()
    prom = args[args.index("--prometheus") + 1]
    assert str(Path(prom).parent) == DEBIAN_TEXTFILE_DIR
    cron = (CONTRIB / "storagectl-audit.cron").read_text()
    assert f"--prometheus {DEBIAN_TEXTFILE_DIR}/storagectl.prom" in cron


def test_every_writable_path_exists_on_a_fresh_host_or_is_optional():
    """ProtectSystem=strict makes everything read-only but ReadWritePaths=, and a
    ReadWritePaths= entry that does not exist fails the unit (226/NAMESPACE) unless it
    starts with "-". The log and lock directories must be writable even on a host where
    they do not exist yet: systemd makes them (LogsDirectory=, StateDirectory=)."""
    service = unit("storagectl-audit.service")["Service"]
    assert service["ProtectSystem"] == ["strict"]
    for path in words(service.get("ReadWritePaths", [])):
        assert path.startswith("-"), path
    args = exec_start()
    log = Path(args[args.index("--log-file") + 1])
    assert log.parent == Path("/var/log") / service["LogsDirectory"][0]
    lock_default = "/var/lib/storagectl/locks"  # storagectl's --lock-path default
    assert "--lock-path" not in args
    assert Path(lock_default).parent == Path("/var/lib") / service["StateDirectory"][0]
    prom = Path(args[args.index("--prometheus") + 1])
    assert f"-{prom.parent}" in words(service["ReadWritePaths"])


def test_ordered_after_libvirtd_and_the_modular_daemons_without_starting_them():
    section = unit("storagectl-audit.service")["Unit"]
    after = set(words(section["After"]))
    assert {"libvirtd.service", "virtqemud.service", "virtqemud.socket"} <= after
    # never pulls a hypervisor daemon in: on a libvirtd host, starting virtqemud would
    # run a second QEMU driver
    wanted = words(section.get("Wants", []) + section.get("Requires", []))
    assert not [u for u in wanted if u.startswith(("libvirtd", "virtqemud"))]


def test_timer_triggers_the_service():
    timer = configparser.ConfigParser()
    timer.read(CONTRIB / "storagectl-audit.timer")
    assert timer["Install"]["WantedBy"] == "timers.target"
    assert timer["Timer"].get("Unit", "storagectl-audit.service") == "storagectl-audit.service"
