"""The ansible tier: real ``ansible-playbook`` runs of ansible/playbooks/ with the
storagectl.fleet collection, against a fleet of "compute hosts" on this machine.

Each inventory host has ``ansible_connection=local`` and its own sandbox node
(``storagectl sandbox create``: real files made with qemu-img, a nova.conf, a libvirt
test-driver node file), lock path and log file as host variables. Its storagectl is
``tests/ansible/fake_host_storagectl.py`` (the real CLI; only the hypervisor that a
migration redefines domains in is a FakeLibvirt, see its docstring), so a conversion
never touches the libvirtd the rest of the test run shares.

ansible-core comes from the test lock (requirements-test.lock); a missing
``ansible-playbook`` beside this Python is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / "ansible"
PLAYBOOKS = REPO / "ansible" / "playbooks"
FAKE = Path(__file__).resolve().parent / "fake_host_storagectl.py"
BIN = Path(sys.executable).parent
RECAP = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", re.MULTILINE)


def ansible_tool(name: str) -> str:
    path = BIN / name
    assert path.is_file(), (
        f"{path} is missing: ansible-core belongs to the test extras "
        "(requirements-test.lock); run scripts/setup.sh"
    )
    return str(path)


def script(path: Path, argv: list[str]) -> Path:
    """A small executable that runs ``argv`` with this Python and this checkout."""
    quoted = " ".join(f"'{a}'" for a in argv)
    path.write_text(f"#!/bin/sh\nPYTHONPATH='{REPO}' exec {quoted} \"$@\"\n")
    path.chmod(0o755)
    return path


@dataclass
class Host:
    name: str
    root: Path
    vars: dict = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "nova" / "nova.conf"

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    @property
    def uuids(self) -> list[str]:
        return sorted(p.name for p in self.instances.iterdir() if p.name != "_base")

    @property
    def restarted(self) -> Path:
        """Made by the test's "restart nova-compute" command (convert_restart_command)."""
        return self.root / "nova-compute-restarted"

    def record(self, uuid: str) -> dict | None:
        path = self.instances / uuid / "storage.yaml"
        return yaml.safe_load(path.read_text()) if path.exists() else None

    def storagectl(self, *args: str) -> subprocess.CompletedProcess:
        """The host's own storagectl (the fake-hypervisor executable), as the modules run it."""
        return subprocess.run(
            [str(self.vars["storagectl_executable"]), *self.global_args(), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def global_args(self) -> list[str]:
        args = []
        for uri in self.vars["storagectl_uri"]:
            args += ["-c", uri]
        for conf in self.vars["storagectl_nova_conf"]:
            args += ["--nova-conf", conf]
        return [
            *args,
            "--lock-path",
            self.vars["storagectl_lock_path"],
            "--log-file",
            self.vars["storagectl_log_file"],
        ]

    def audit(self) -> tuple[int, dict]:
        res = self.storagectl("audit", "-o", "json")
        return res.returncode, json.loads(res.stdout)


@dataclass
class Run:
    rc: int
    output: str

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP: host -> {ok, changed, unreachable, failed, skipped, rescued, ignored}."""
        text = self.output.rsplit("PLAY RECAP", 1)[-1]
        return {
            host: {k: int(v) for k, v in (kv.split("=") for kv in counts.split())}
            for host, counts in RECAP.findall(text)
        }


class Fleet:
    """An inventory of compute hosts on this machine, and ansible-playbook over it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hosts: dict[str, Host] = {}
        self.fake = script(root / "storagectl-fake-host", [sys.executable, str(FAKE)])
        self.controller = script(root / "storagectl", [sys.executable, "-m", "storagectl"])
        self.inventory = root / "inventory.yml"

    def add(self, name: str, *, instances: int = 3, running: bool = False, **hostvars) -> Host:
        """A host with a sandbox node of ``instances`` instances, all shut off unless
        ``running`` (then the sandbox's own mix of running and shut-off ones)."""
        root = self.root / name
        res = subprocess.run(
            [
                str(self.controller),
                "sandbox",
                "create",
                str(root),
                "--instances",
                str(instances),
                "--seed",
                str(len(self.hosts)),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr
        node = root / "node.xml"
        if not running:
            node.write_text(
                node.read_text().replace(
                    "<test:runstate>1</test:runstate>", "<test:runstate>5</test:runstate>"
                )
            )
        host = Host(name, root)
        host.vars = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "storagectl_executable": str(self.fake),
            "storagectl_uri": [f"test://{node}"],
            "storagectl_nova_conf": [str(host.conf)],
            "storagectl_lock_path": str(root / "locks"),
            "storagectl_log_file": str(root / "storagectl.log"),
            "convert_restart_command": ["touch", str(host.restarted)],
            **hostvars,
        }
        self.hosts[name] = host
        self.write_inventory()
        return host

    def add_unreachable(self, name: str) -> None:
        """An SSH host nothing listens for (127.0.0.1 port 1): Ansible reports it unreachable."""
        self.hosts[name] = Host(
            name,
            self.root / name,
            {
                "ansible_connection": "ssh",
                "ansible_host": "127.0.0.1",
                "ansible_port": 1,
                "ansible_ssh_common_args": "-o ConnectTimeout=5 -o StrictHostKeyChecking=no",
            },
        )
        self.write_inventory()

    def write_inventory(self) -> None:
        inv = {"all": {"hosts": {n: h.vars for n, h in self.hosts.items()}}}
        self.inventory.write_text(json.dumps(inv, indent=1))

    def play(self, playbook: str, *args: str, **extra_vars) -> Run:
        home = self.root / "ansible-home"
        env = {
            **os.environ,
            "ANSIBLE_HOME": str(home),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(home / "cp"),
            "ANSIBLE_CONFIG": str(self.root / "no-ansible.cfg"),  # none: defaults only
            "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
        }
        env.pop("PYTHONPATH", None)  # the storagectl wrappers set their own
        cmd = [
            ansible_tool("ansible-playbook"),
            "-i",
            str(self.inventory),
            str(PLAYBOOKS / playbook),
            *args,
        ]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        return Run(res.returncode, res.stdout + res.stderr)


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)
