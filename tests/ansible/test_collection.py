"""The storagectl.fleet collection as Ansible's own tools see it.

* ``ansible-galaxy collection build`` builds it and ``collection install`` installs the
  tarball (offline), and the installed copy answers ``ansible-doc``;
* ``ansible-doc`` renders every module (DOCUMENTATION, the doc fragment, RETURN parse);
* validate-modules' core check, done here: each module's documented options are its
  argument_spec (type, default, choices, elements, aliases, required), and every EXAMPLES
  task uses documented options only. (``ansible-test sanity --test validate-modules``
  builds a venv with a pip bootstrap script from ci-files.testing.ansible.com, which a
  machine with only PyPI and Debian reachable cannot fetch - so not that one.)
* the ``ansible-test sanity`` tests that run offline (no venv of their own);
* ``ansible-lint`` with the production profile (ansible/.ansible-lint);
* ``ansible-playbook --syntax-check`` of every playbook;
* the modules' failures are one message, never a traceback.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.ansible.conftest import COLLECTIONS, PLAYBOOKS, Fleet, ansible_tool

COLLECTION = COLLECTIONS / "ansible_collections/storagectl/fleet"
MODULES = sorted(p.stem for p in (COLLECTION / "plugins/modules").glob("storagectl_*.py"))
OFFLINE_SANITY = [
    "action-plugin-docs",
    "compile",
    "empty-init",
    "ignores",
    "line-endings",
    "no-assert",
    "no-get-exception",
    "no-illegal-filenames",
    "no-smart-quotes",
    "replace-urlopen",
    "shebang",
    "symlinks",
    "use-argspec-type-path",
    "use-compat-six",
]


def env(tmp_path: Path, collections: Path = COLLECTIONS) -> dict[str, str]:
    home = tmp_path / "ansible-home"
    e = {
        **os.environ,
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"),
        "ANSIBLE_COLLECTIONS_PATH": str(collections),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_CONFIG": str(tmp_path / "no-ansible.cfg"),
    }
    e.pop("PYTHONPATH", None)
    return e


def run(argv: list[str], tmp_path: Path, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", env(tmp_path))
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)


def test_the_collection_has_the_four_modules_and_the_role() -> None:
    assert MODULES == [
        "storagectl_audit",
        "storagectl_inspect",
        "storagectl_migrate",
        "storagectl_persist",
    ]
    assert (COLLECTION / "roles/storagectl_host/tasks/main.yml").is_file()
    galaxy = yaml.safe_load((COLLECTION / "galaxy.yml").read_text())
    assert (galaxy["namespace"], galaxy["name"]) == ("storagectl", "fleet")


def test_build_then_install_the_tarball_offline(tmp_path: Path) -> None:
    galaxy = ansible_tool("ansible-galaxy")
    res = run(
        [galaxy, "collection", "build", str(COLLECTION), "--output-path", str(tmp_path / "dist")],
        tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (tarball,) = (tmp_path / "dist").glob("storagectl-fleet-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    for module in MODULES:
        assert f"plugins/modules/{module}.py" in names
    assert {
        "MANIFEST.json",
        "FILES.json",
        "plugins/module_utils/storagectl.py",
        "plugins/doc_fragments/common.py",
        "meta/runtime.yml",
        "roles/storagectl_host/tasks/main.yml",
        "roles/storagectl_host/templates/storagectl-audit.service.j2",
    } <= names
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/output")]
    dest = tmp_path / "installed"
    # into an empty collections path (else it finds the checkout's copy "already installed")
    res = run(
        [galaxy, "collection", "install", "--offline", "-p", str(dest), str(tarball)],
        tmp_path,
        env=env(tmp_path, dest),
    )
    assert res.returncode == 0 and "installed successfully" in res.stdout, res.stdout + res.stderr
    res = run(
        [ansible_tool("ansible-doc"), "-j", "storagectl.fleet.storagectl_audit"],
        tmp_path,
        env=env(tmp_path, dest),
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)["storagectl.fleet.storagectl_audit"]
    assert str(dest) in doc["doc"]["filename"]


def ansible_doc(module: str, tmp_path: Path) -> dict:
    res = run([ansible_tool("ansible-doc"), "-j", f"storagectl.fleet.{module}"], tmp_path)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    return json.loads(res.stdout)[f"storagectl.fleet.{module}"]


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_renders_the_module(module: str, tmp_path: Path) -> None:
    res = run([ansible_tool("ansible-doc"), f"storagectl.fleet.{module}"], tmp_path)
    assert res.returncode == 0 and "[ERROR]" not in res.stderr, res.stderr
    assert f"storagectl.fleet.{module}" in res.stdout and "RETURN VALUES" in res.stdout
    doc = ansible_doc(module, tmp_path)
    assert doc["return"] and all(v.get("description") for v in doc["return"].values())
    assert "cmd" in doc["return"]


def argument_spec(module: str) -> dict:
    """The module's argument_spec, by running its main() against a fake AnsibleModule."""
    import importlib
    import sys

    sys.path.insert(0, str(COLLECTIONS))
    try:
        mod = importlib.import_module(
            f"ansible_collections.storagectl.fleet.plugins.modules.{module}"
        )
    finally:
        sys.path.remove(str(COLLECTIONS))
    seen = {}

    class Captured(Exception):
        pass

    def fake(**kwargs):
        seen.update(kwargs)
        raise Captured

    real = mod.AnsibleModule
    mod.AnsibleModule = fake
    try:
        with pytest.raises(Captured):
            mod.main()
    finally:
        mod.AnsibleModule = real
    return seen


@pytest.mark.parametrize("module", MODULES)
def test_documented_options_are_the_argument_spec(module: str, tmp_path: Path) -> None:
    doc = ansible_doc(module, tmp_path)["doc"]
    spec = argument_spec(module)
    options, args = doc["options"], spec["argument_spec"]
    assert sorted(options) == sorted(args)
    for name, arg in args.items():
        opt = options[name]
        assert opt.get("type", "str") == arg.get("type", "str"), name
        assert opt.get("default") == arg.get("default"), name
        assert opt.get("required", False) == arg.get("required", False), name
        assert sorted(opt.get("choices") or []) == sorted(arg.get("choices") or []), name
        assert opt.get("elements") == arg.get("elements"), name
        assert sorted(opt.get("aliases") or []) == sorted(arg.get("aliases") or []), name
        assert opt.get("description"), name
    assert doc["attributes"]["check_mode"]["support"] == (
        "full" if spec.get("supports_check_mode") else "none"
    )


@pytest.mark.parametrize("module", MODULES)
def test_examples_use_documented_options_only(module: str, tmp_path: Path) -> None:
    doc = ansible_doc(module, tmp_path)
    options = set(doc["doc"]["options"])
    options |= {a for o in doc["doc"]["options"].values() for a in o.get("aliases") or []}
    tasks = yaml.safe_load(doc["examples"])
    used = [t[f"storagectl.fleet.{module}"] for t in tasks if f"storagectl.fleet.{module}" in t]
    assert used, "EXAMPLES show the module"
    for args in used:
        assert set(args or {}) <= options, set(args) - options


def test_offline_ansible_test_sanity(tmp_path: Path) -> None:
    argv = [ansible_tool("ansible-test"), "sanity", "--python", "3.11"]
    for name in OFFLINE_SANITY:
        argv += ["--test", name]
    e = env(tmp_path)
    e["HOME"] = str(tmp_path / "home")  # its cache is ~/.ansible/test
    res = run(argv, tmp_path, cwd=COLLECTION, env=e)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in OFFLINE_SANITY:
        assert f'Running sanity test "{name}"' in res.stdout


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    """ansible-lint (test lock) over the playbooks, the role and the collection, with
    ansible/.ansible-lint: the production profile, offline (no Galaxy)."""
    e = env(tmp_path)
    e["PATH"] = f"{Path(ansible_tool('ansible-lint')).parent}:{e.get('PATH', '')}"
    e["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    e["HOME"] = str(tmp_path / "home")
    res = run(
        [
            ansible_tool("ansible-lint"),
            "--offline",
            "--nocolor",
            "playbooks",
            "ansible_collections/storagectl/fleet",
        ],
        tmp_path,
        env=e,
        cwd=COLLECTIONS,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Profile 'production' was required, and it passed" in res.stdout + res.stderr


@pytest.mark.parametrize("playbook", sorted(p.name for p in PLAYBOOKS.glob("*.yml")))
def test_playbook_syntax(playbook: str, tmp_path: Path) -> None:
    res = run(
        [
            ansible_tool("ansible-playbook"),
            "--syntax-check",
            "-i",
            "localhost,",
            str(PLAYBOOKS / playbook),
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_role_parses(tmp_path: Path) -> None:
    play = tmp_path / "role.yml"
    play.write_text("- hosts: all\n  roles: [storagectl.fleet.storagectl_host]\n")
    res = run(
        [ansible_tool("ansible-playbook"), "--syntax-check", "-i", "localhost,", str(play)],
        tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def adhoc(fleet: Fleet, module: str, args: dict, *extra: str) -> dict:
    """One module run on cn1 through ``ansible -m``; its result (never a traceback)."""
    res = subprocess.run(
        [
            ansible_tool("ansible"),
            "cn1",
            "-i",
            str(fleet.inventory),
            "-m",
            f"storagectl.fleet.{module}",
            "-a",
            json.dumps(args),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(fleet.root),
    )
    assert "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    start = res.stdout.find("cn1 | ")
    assert start >= 0, res.stdout + res.stderr
    arrow = res.stdout.index("=>", start)
    result = json.JSONDecoder().raw_decode(res.stdout[arrow + 2 :].lstrip())[0]
    # "cn1 | FAILED! => {...}" / "cn1 | SUCCESS => {...}": the callback drops "failed"
    result["failed"] = "FAILED!" in res.stdout[start:arrow]
    return result


def test_module_failures_are_one_message_never_a_traceback(fleet: Fleet) -> None:
    cn1 = fleet.add("cn1")
    base = {
        "uri": cn1.vars["storagectl_uri"],
        "nova_conf": cn1.vars["storagectl_nova_conf"],
        "lock_path": cn1.vars["storagectl_lock_path"],
        "log_file": cn1.vars["storagectl_log_file"],
    }
    exe = {"executable": cn1.vars["storagectl_executable"]}
    # the import guard: no storagectl on the host
    res = adhoc(fleet, "storagectl_audit", {**base, "executable": "/nonexistent/storagectl"})
    assert (
        res["failed"]
        and "storagectl executable '/nonexistent/storagectl' was not found" in (res["msg"])
    )
    res = adhoc(fleet, "storagectl_inspect", {**base, "executable": "no-such-storagectl"})
    assert res["failed"] and "storagectl.fleet.storagectl_host role" in res["msg"]
    # bad options: Ansible's own argument checks
    res = adhoc(fleet, "storagectl_persist", {**base, **exe})
    assert res["failed"] and res["msg"] == "give instances (uuids or domain names) or all: true"
    res = adhoc(fleet, "storagectl_persist", {**base, **exe, "all": True, "instances": ["x"]})
    assert res["failed"] and "mutually exclusive" in res["msg"]
    res = adhoc(fleet, "storagectl_migrate", {**base, **exe, "to": "tape", "all": True})
    assert res["failed"] and "value of to must be one of" in res["msg"]
    res = adhoc(
        fleet,
        "storagectl_migrate",
        {**base, **exe, "to": "flat", "instances": ["x"], "state": "any"},
    )
    assert res["failed"] and "state is only for a whole-host conversion" in res["msg"]
    # storagectl's own refusals: its one-line error is the message
    res = adhoc(fleet, "storagectl_audit", {**base, **exe, "assume": ["[libvirt] no_such=1"]})
    assert res["failed"] and res["status"] == 3 and "no_such" in res["msg"]
    res = adhoc(
        fleet,
        "storagectl_migrate",
        {**base, **exe, "to": "flat", "instances": ["no-such-instance"]},
    )
    assert res["failed"] and "no-such-instance" in res["msg"], res
    res = adhoc(fleet, "storagectl_inspect", {**base, **exe, "instances": ["no-such"]})
    assert res["failed"] and "no-such" in res["msg"] and res["inspect"] is not None
    # and a healthy call: facts, never changed, even in check mode
    res = adhoc(fleet, "storagectl_audit", {**base, **exe, "fail_on": "critical"})
    assert res["failed"] and res["status"] == 2 and res["changed"] is False
    assert "audit status 2 (CRITICAL)" in res["msg"] and res["misread"]
    res = adhoc(fleet, "storagectl_inspect", {**base, **exe}, "--check")
    assert not res.get("failed") and res["changed"] is False and len(res["instances"]) == 3


def test_module_source_has_the_ansible_boilerplate() -> None:
    for module in MODULES:
        path = COLLECTION / "plugins/modules" / f"{module}.py"
        tree = ast.parse(path.read_text())
        names = {
            t.id
            for n in tree.body
            if isinstance(n, ast.Assign)
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        assert {"DOCUMENTATION", "EXAMPLES", "RETURN", "__metaclass__"} <= names
        assert path.read_text().startswith("#!/usr/bin/python\n")


def test_the_readme_fleet_section_names_what_exists() -> None:
    readme = (COLLECTIONS.parent / "README.md").read_text()
    section = readme.split("## Fleet (Ansible)", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"ansible/playbooks/(\w+\.yml)", section))
    assert named == {p.name for p in PLAYBOOKS.glob("*.yml")}
    assert "ansible-galaxy collection install ./ansible/ansible_collections/storagectl/fleet" in (
        section
    )
    assert "storagectl fleet report fleet-audit/" in section
